//! The iperf3 3.12 control protocol, without I/O: the state bytes, the
//! cookie, the length-prefixed JSON messages, the client's parameters and
//! the results both sides exchange at the end.
//!
//! Everything here reads bytes from the network: every length is bounded,
//! every field checked, and bad input is an [`Error`], never a panic.

use alloc::string::String;
use alloc::vec::Vec;

use serde_json::{Map, Value};

/// Signed state bytes on the control connection.
pub mod state {
    pub const TEST_START: i8 = 1;
    pub const TEST_RUNNING: i8 = 2;
    pub const TEST_END: i8 = 4;
    pub const PARAM_EXCHANGE: i8 = 9;
    pub const CREATE_STREAMS: i8 = 10;
    pub const SERVER_TERMINATE: i8 = 11;
    pub const CLIENT_TERMINATE: i8 = 12;
    pub const EXCHANGE_RESULTS: i8 = 13;
    pub const DISPLAY_RESULTS: i8 = 14;
    pub const IPERF_START: i8 = 15;
    pub const IPERF_DONE: i8 = 16;
    pub const ACCESS_DENIED: i8 = -1;
    pub const SERVER_ERROR: i8 = -2;
}

/// iperf3's error numbers (`i_errno`) we answer with after
/// [`state::SERVER_ERROR`]; the client prints its own text for each.
pub mod errno {
    /// "control socket has closed unexpectedly"
    pub const CTRL_CLOSE: i32 = 109;
    /// "received an unknown control message"
    pub const MESSAGE: i32 = 110;
    /// "unable to receive parameters from client"
    pub const RECV_PARAMS: i32 = 114;
    /// "unable to receive results"
    pub const RECV_RESULTS: i32 = 117;
    /// "unable to accept connection from client"
    pub const ACCEPT: i32 = 201;
    /// "unknown protocol" (we serve TCP only)
    pub const PROTOCOL: i32 = 206;
}

/// The cookie: 36 characters and a NUL, sent first on every connection of a
/// test (control and data).
pub const COOKIE_LEN: usize = 37;
pub type Cookie = [u8; COOKIE_LEN];

/// Largest JSON message we accept (the client's parameters, its results).
/// A results message carries ~150 bytes per stream: 128 streams fit well.
pub const MAX_JSON: usize = 64 * 1024;

/// The most parallel streams a test may ask for (`-P`; iperf3's own limit).
pub const MAX_STREAMS: u32 = 128;
/// Largest block (`-l`) a TCP test may ask for (iperf3's own limit).
pub const MAX_BLOCK: u32 = 1024 * 1024;
/// iperf3's TCP block when `-l` is not given.
pub const DEFAULT_BLOCK: u32 = 128 * 1024;

/// Why a message could not be taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The length prefix is 0 or above [`MAX_JSON`].
    Length(u32),
    /// Not JSON, or not an object.
    Json,
    /// A field is missing, has the wrong type, or is out of range.
    Field(&'static str),
    /// Not a TCP test.
    Protocol,
}

impl Error {
    /// The `i_errno` a server answers with when the client's parameters
    /// fail this way.
    pub fn params_errno(&self) -> i32 {
        match self {
            Error::Protocol => errno::PROTOCOL,
            _ => errno::RECV_PARAMS,
        }
    }
}

/// What the client asked for.
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// Streams in each direction (`-P`).
    pub parallel: u32,
    /// The server sends (`-R`).
    pub reverse: bool,
    /// Both send, on `parallel` streams each way (`--bidir`).
    pub bidirectional: bool,
    /// Block size (`-l`).
    pub len: u32,
    /// Seconds measured (`-t`; 0 when the test is bounded by bytes or
    /// blocks instead).
    pub time: u32,
    /// Seconds sent before measuring (`-O`).
    pub omit: u32,
    /// Byte and block limits (`-n`, `-k`; 0 for none).
    pub num: u64,
    pub blockcount: u64,
    /// The client wants our output back (`--get-server-output`).
    pub get_server_output: bool,
    pub client_version: Option<String>,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            parallel: 1,
            reverse: false,
            bidirectional: false,
            len: DEFAULT_BLOCK,
            time: 10,
            omit: 0,
            num: 0,
            blockcount: 0,
            get_server_output: false,
            client_version: None,
        }
    }
}

impl Params {
    /// Data connections the client opens: `parallel`, twice with `--bidir`.
    pub fn streams(&self) -> u32 {
        if self.bidirectional {
            self.parallel * 2
        } else {
            self.parallel
        }
    }

    /// Whether the server sends on the stream accepted `index`-th (from 0).
    /// With `--bidir` the client opens its sending streams first (the
    /// server receives on those), then its receiving ones.
    pub fn server_sends(&self, index: u32) -> bool {
        if self.bidirectional {
            index >= self.parallel
        } else {
            self.reverse
        }
    }

    /// Parses the client's parameter message (the JSON text, without its
    /// length prefix), as iperf3's `get_parameters` reads it.
    pub fn parse(json: &[u8]) -> Result<Params, Error> {
        let value: Value = serde_json::from_slice(json).map_err(|_| Error::Json)?;
        let obj = value.as_object().ok_or(Error::Json)?;
        if obj.contains_key("udp") || obj.contains_key("sctp") || !obj.contains_key("tcp") {
            return Err(Error::Protocol);
        }
        let d = Params::default();
        let parallel = uint(obj, "parallel", u64::from(d.parallel))?;
        if parallel == 0 || parallel > u64::from(MAX_STREAMS) {
            return Err(Error::Field("parallel"));
        }
        let len = uint(obj, "len", u64::from(d.len))?;
        if len == 0 || len > u64::from(MAX_BLOCK) {
            return Err(Error::Field("len"));
        }
        // A day at most: beyond that a number is a mistake, not a test.
        let time = uint(obj, "time", u64::from(d.time))?;
        let omit = uint(obj, "omit", 0)?;
        if time > 86_400 {
            return Err(Error::Field("time"));
        }
        if omit > 86_400 {
            return Err(Error::Field("omit"));
        }
        Ok(Params {
            parallel: parallel as u32,
            // iperf3 takes these when present, whatever their value.
            reverse: obj.contains_key("reverse"),
            bidirectional: obj.contains_key("bidirectional"),
            len: len as u32,
            time: time as u32,
            omit: omit as u32,
            num: uint(obj, "num", 0)?,
            blockcount: uint(obj, "blockcount", 0)?,
            get_server_output: obj.contains_key("get_server_output"),
            client_version: obj.get("client_version").and_then(Value::as_str).map(String::from),
        })
    }

    /// The parameter message a client sends (the JSON text), as iperf3 3.12
    /// writes it.
    pub fn to_json(&self) -> Vec<u8> {
        let mut m = Map::new();
        m.insert("tcp".into(), Value::Bool(true));
        m.insert("omit".into(), self.omit.into());
        m.insert("time".into(), self.time.into());
        m.insert("num".into(), self.num.into());
        m.insert("blockcount".into(), self.blockcount.into());
        m.insert("parallel".into(), self.parallel.into());
        if self.reverse {
            m.insert("reverse".into(), Value::Bool(true));
        }
        if self.bidirectional {
            m.insert("bidirectional".into(), Value::Bool(true));
        }
        m.insert("len".into(), self.len.into());
        m.insert("pacing_timer".into(), 1000.into());
        m.insert("client_version".into(), self.client_version.as_deref().unwrap_or("3.12").into());
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }
}

/// A non-negative integer field, `default` when absent. iperf3 (cJSON)
/// sends numbers as doubles: integral ones are taken, others refused.
fn uint(obj: &Map<String, Value>, key: &'static str, default: u64) -> Result<u64, Error> {
    match obj.get(key) {
        None => Ok(default),
        Some(v) => v
            .as_u64()
            .or_else(|| v.as_f64().filter(|&f| (0.0..=9.0e15).contains(&f) && (f as u64) as f64 == f).map(|f| f as u64))
            .ok_or(Error::Field(key)),
    }
}

/// One stream's line in a results message.
#[derive(Clone, Debug, PartialEq)]
pub struct StreamResult {
    pub id: u32,
    /// Bytes sent (by a sending side, after the omitted seconds) or received.
    pub bytes: u64,
    /// Retransmissions of a sending side, -1 when unknown.
    pub retransmits: i64,
    /// Seconds from the start of measuring to the end.
    pub end_time: f64,
}

/// A results message: what each side sends the other at the end.
#[derive(Clone, Debug, PartialEq)]
pub struct Results {
    /// Percent of the CPU busy during the test, and its user and system
    /// parts.
    pub cpu_util_total: f64,
    pub cpu_util_user: f64,
    pub cpu_util_system: f64,
    /// 1 when the sending side counts retransmissions, 0 when it does not,
    /// -1 from a side that only received.
    pub sender_has_retransmits: i64,
    pub streams: Vec<StreamResult>,
}

impl Results {
    /// The JSON text, with every field iperf3's `get_results` requires.
    pub fn to_json(&self) -> Vec<u8> {
        let streams = self
            .streams
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("id".into(), s.id.into());
                m.insert("bytes".into(), s.bytes.into());
                m.insert("retransmits".into(), s.retransmits.into());
                m.insert("jitter".into(), 0.into());
                m.insert("errors".into(), 0.into());
                m.insert("packets".into(), 0.into());
                m.insert("start_time".into(), 0.into());
                m.insert("end_time".into(), finite(s.end_time));
                Value::Object(m)
            })
            .collect();
        let mut m = Map::new();
        m.insert("cpu_util_total".into(), finite(self.cpu_util_total));
        m.insert("cpu_util_user".into(), finite(self.cpu_util_user));
        m.insert("cpu_util_system".into(), finite(self.cpu_util_system));
        m.insert("sender_has_retransmits".into(), self.sender_has_retransmits.into());
        m.insert("streams".into(), Value::Array(streams));
        serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
    }

    /// Parses a results message by the rules of iperf3's `get_results`: the
    /// four CPU/retransmit fields and `streams` must be there, and every
    /// stream needs id, bytes, retransmits, jitter, errors and packets
    /// (start_time and end_time are optional).
    pub fn parse(json: &[u8]) -> Result<Results, Error> {
        let value: Value = serde_json::from_slice(json).map_err(|_| Error::Json)?;
        let obj = value.as_object().ok_or(Error::Json)?;
        let num = |o: &Map<String, Value>, k: &'static str| o.get(k).and_then(Value::as_f64).ok_or(Error::Field(k));
        let streams = obj.get("streams").and_then(Value::as_array).ok_or(Error::Field("streams"))?;
        let streams = streams
            .iter()
            .map(|s| {
                let s = s.as_object().ok_or(Error::Field("streams"))?;
                for k in ["jitter", "errors", "packets"] {
                    num(s, k)?;
                }
                let id = num(s, "id")?;
                let bytes = num(s, "bytes")?;
                if !(0.0..=f64::from(u32::MAX)).contains(&id) || bytes < 0.0 {
                    return Err(Error::Field("id"));
                }
                let span =
                    match (s.get("start_time").and_then(Value::as_f64), s.get("end_time").and_then(Value::as_f64)) {
                        (Some(a), Some(b)) => b - a,
                        _ => 0.0,
                    };
                Ok(StreamResult {
                    id: id as u32,
                    bytes: bytes as u64,
                    retransmits: num(s, "retransmits")? as i64,
                    end_time: span,
                })
            })
            .collect::<Result<Vec<_>, Error>>()?;
        Ok(Results {
            cpu_util_total: num(obj, "cpu_util_total")?,
            cpu_util_user: num(obj, "cpu_util_user")?,
            cpu_util_system: num(obj, "cpu_util_system")?,
            sender_has_retransmits: num(obj, "sender_has_retransmits")? as i64,
            streams,
        })
    }
}

/// JSON has no NaN or infinity.
fn finite(x: f64) -> Value {
    if x.is_finite() {
        Value::from(x)
    } else {
        Value::from(0)
    }
}

/// The stream ids of a test, in the order the streams were accepted:
/// 1, 3, 4, 5, ... (iperf3 skips 2).
pub fn stream_id(index: u32) -> u32 {
    if index == 0 {
        1
    } else {
        index + 2
    }
}

/// Frames a JSON message: a 4-byte big-endian length, then the text.
pub fn frame_json(json: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
}

/// The SERVER_ERROR answer: the state byte, then iperf3's error number and
/// an errno (0), both big-endian i32.
pub fn server_error(errno: i32, out: &mut Vec<u8>) {
    out.push(state::SERVER_ERROR as u8);
    out.extend_from_slice(&errno.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
}

/// Reads a length-prefixed message from a byte stream that arrives in
/// pieces.
#[derive(Debug, Default)]
pub struct JsonReader {
    len: Option<u32>,
    head: [u8; 4],
    have_head: usize,
    body: Vec<u8>,
}

impl JsonReader {
    /// Takes bytes from `input`; returns how many it used, and the message
    /// once it is whole. A length of 0 or above [`MAX_JSON`] is an error
    /// before any of the body is read (nothing is allocated for it).
    pub fn feed(&mut self, input: &[u8]) -> (usize, Option<Result<Vec<u8>, Error>>) {
        let mut used = 0;
        if self.len.is_none() {
            let n = (4 - self.have_head).min(input.len());
            self.head[self.have_head..self.have_head + n].copy_from_slice(&input[..n]);
            self.have_head += n;
            used += n;
            if self.have_head < 4 {
                return (used, None);
            }
            let len = u32::from_be_bytes(self.head);
            if len == 0 || len as usize > MAX_JSON {
                return (used, Some(Err(Error::Length(len))));
            }
            self.len = Some(len);
            self.body = Vec::with_capacity(len as usize);
        }
        let want = self.len.unwrap_or(0) as usize - self.body.len();
        let n = want.min(input.len() - used);
        self.body.extend_from_slice(&input[used..used + n]);
        used += n;
        if self.body.len() == self.len.unwrap_or(0) as usize {
            let body = core::mem::take(&mut self.body);
            *self = JsonReader::default();
            return (used, Some(Ok(body)));
        }
        (used, None)
    }
}
