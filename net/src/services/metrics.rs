//! Counters over HTTP in the Prometheus text format: `GET /metrics` on port
//! 9100, one request per connection (the response ends with our close).
//!
//! The counters live with the vCPUs that own them and are not shared per
//! packet. Each vCPU copies its own into its row of a [`Board`] now and
//! then (the kernel does it every 100 ms): relaxed atomic stores into
//! memory no one else writes. Whichever vCPU serves the scrape reads every
//! row. A scrape is as fresh as the last copy.

use alloc::boxed::Box;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::sync::atomic::{AtomicU64, Ordering};

use smoltcp::socket::tcp;

use super::{Connection, TcpService};

/// What one series counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only ever grows (Prometheus `counter`).
    Counter,
    /// Goes up and down (Prometheus `gauge`).
    Gauge,
}

/// One series: a value per row.
#[derive(Clone, Copy, Debug)]
pub struct Series {
    /// Without the `mqnet_` prefix.
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
}

impl Series {
    pub const fn counter(name: &'static str, help: &'static str) -> Series {
        Series { name, help, kind: Kind::Counter }
    }

    pub const fn gauge(name: &'static str, help: &'static str) -> Series {
        Series { name, help, kind: Kind::Gauge }
    }
}

/// Rows (one per vCPU) of values (one per series), each row written by its
/// vCPU only.
pub struct Board {
    series: &'static [Series],
    /// Each row's labels, e.g. `cpu="0",rxq="0",txq="1"`.
    labels: Vec<String>,
    values: Vec<AtomicU64>,
}

impl Board {
    /// A board of `labels.len()` rows over `series`, all zero.
    pub fn new(series: &'static [Series], labels: Vec<String>) -> Board {
        let values = (0..series.len() * labels.len()).map(|_| AtomicU64::new(0)).collect();
        Board { series, labels, values }
    }

    /// Row `row`'s values, in the order of the series (extra values are
    /// ignored, missing ones left as they were).
    pub fn publish(&self, row: usize, values: &[u64]) {
        let n = self.series.len();
        if let Some(slots) = self.values.get(row * n..(row + 1) * n) {
            for (slot, &v) in slots.iter().zip(values) {
                slot.store(v, Ordering::Relaxed);
            }
        }
    }

    /// The Prometheus text exposition of every series and row.
    pub fn render(&self, out: &mut String) {
        let n = self.series.len();
        for (i, s) in self.series.iter().enumerate() {
            let kind = match s.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(out, "# HELP mqnet_{} {}", s.name, s.help);
            let _ = writeln!(out, "# TYPE mqnet_{} {kind}", s.name);
            for (row, labels) in self.labels.iter().enumerate() {
                let v = self.values[row * n + i].load(Ordering::Relaxed);
                let _ = writeln!(out, "mqnet_{}{{{labels}}} {v}", s.name);
            }
        }
    }
}

/// The metrics service, serving one board.
pub struct Metrics {
    board: &'static Board,
}

impl Metrics {
    /// Node exporter's well-known port.
    pub const PORT: u16 = 9100;
    /// The longest request head read; longer ones are refused.
    pub const MAX_REQUEST: usize = 2048;

    pub fn new(board: &'static Board) -> Metrics {
        Metrics { board }
    }
}

impl TcpService for Metrics {
    fn name(&self) -> &'static str {
        "metrics"
    }

    fn port(&self) -> u16 {
        Metrics::PORT
    }

    fn accept(&mut self) -> Box<dyn Connection> {
        Box::new(MetricsConnection { board: self.board, request: Vec::new(), response: None, sent: 0 })
    }
}

/// One scrape: read the request head, answer, close.
pub struct MetricsConnection {
    board: &'static Board,
    request: Vec<u8>,
    response: Option<Vec<u8>>,
    sent: usize,
}

/// The response to a request head (everything up to the blank line).
pub fn respond(head: &[u8], board: &Board) -> Vec<u8> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let line = core::str::from_utf8(line).unwrap_or("").trim_end_matches('\r');
    let mut words = line.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let (status, kind, body) = match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => {
            let mut body = String::new();
            board.render(&mut body);
            ("200 OK", "text/plain; version=0.0.4", body)
        }
        ("GET", _) => ("404 Not Found", "text/plain", String::from("only /metrics is here\n")),
        _ => ("405 Method Not Allowed", "text/plain", String::from("only GET\n")),
    };
    let mut out = String::new();
    let _ = write!(
        out,
        "HTTP/1.0 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    out.into_bytes()
}

fn head_end(request: &[u8]) -> Option<usize> {
    request.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| request.windows(2).position(|w| w == b"\n\n"))
}

impl Connection for MetricsConnection {
    fn serve(&mut self, socket: &mut tcp::Socket, _scratch: &mut [u8]) -> bool {
        let mut progress = false;
        if self.response.is_none() {
            while let Ok(n @ 1..) = socket.recv(|bytes| {
                let room = Metrics::MAX_REQUEST + 1 - self.request.len();
                let n = bytes.len().min(room);
                self.request.extend_from_slice(&bytes[..n]);
                (n, n)
            }) {
                progress |= n > 0;
                if self.request.len() > Metrics::MAX_REQUEST {
                    break;
                }
            }
            if let Some(end) = head_end(&self.request) {
                self.response = Some(respond(&self.request[..end], self.board));
            } else if self.request.len() > Metrics::MAX_REQUEST {
                self.response =
                    Some(b"HTTP/1.0 431 Request Header Fields Too Large\r\nConnection: close\r\n\r\n".to_vec());
            } else if !socket.may_recv() {
                // The peer closed before finishing its request.
                socket.close();
                return true;
            }
        }
        if let Some(response) = &self.response {
            if self.sent < response.len() {
                if let Ok(n) = socket.send_slice(&response[self.sent..]) {
                    self.sent += n;
                    progress |= n > 0;
                }
            }
            if self.sent == response.len() && socket.send_queue() == 0 && socket.may_send() {
                // All of it acknowledged: our FIN ends the response.
                socket.close();
                progress = true;
            }
        }
        progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static SERIES: [Series; 2] =
        [Series::counter("rx_packets", "Frames received."), Series::gauge("tcp_active", "Open connections.")];

    fn board() -> Board {
        Board::new(&SERIES, std::vec![String::from("cpu=\"0\",rxq=\"0\""), String::from("cpu=\"1\"")])
    }

    #[test]
    fn every_row_of_every_series_is_rendered_in_the_text_format() {
        let b = board();
        b.publish(0, &[10, 2]);
        b.publish(1, &[7, 1, 99]);
        b.publish(5, &[1, 1]);
        let mut out = String::new();
        b.render(&mut out);
        assert_eq!(
            out,
            "# HELP mqnet_rx_packets Frames received.\n# TYPE mqnet_rx_packets counter\n\
             mqnet_rx_packets{cpu=\"0\",rxq=\"0\"} 10\nmqnet_rx_packets{cpu=\"1\"} 7\n\
             # HELP mqnet_tcp_active Open connections.\n# TYPE mqnet_tcp_active gauge\n\
             mqnet_tcp_active{cpu=\"0\",rxq=\"0\"} 2\nmqnet_tcp_active{cpu=\"1\"} 1\n"
        );
    }

    #[test]
    fn requests_get_the_metrics_or_a_clean_error() {
        let b = board();
        b.publish(0, &[3, 0]);
        let ok = String::from_utf8(respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n", &b)).unwrap();
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"));
        assert!(head.contains(&std::format!("Content-Length: {}", body.len())));
        assert!(body.contains("mqnet_rx_packets{cpu=\"0\",rxq=\"0\"} 3\n"));
        let query = String::from_utf8(respond(b"GET /metrics?x=1 HTTP/1.0", &b)).unwrap();
        assert!(query.starts_with("HTTP/1.0 200 OK"));
        for (req, status) in [
            (&b"GET / HTTP/1.0"[..], "404"),
            (b"POST /metrics HTTP/1.0", "405"),
            (b"", "405"),
            (b"\xff\xfe garbage", "405"),
        ] {
            let r = String::from_utf8(respond(req, &b)).unwrap();
            assert!(r.starts_with(&std::format!("HTTP/1.0 {status}")), "{r}");
        }
    }

    #[test]
    fn the_head_ends_at_the_blank_line() {
        assert_eq!(head_end(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"), Some(30));
        assert_eq!(head_end(b"GET /metrics HTTP/1.0\n\n"), Some(21));
        assert_eq!(head_end(b"GET /metrics HTTP/1.1\r\n"), None);
    }
}
