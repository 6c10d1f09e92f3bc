//! A minimal QMP client (QEMU's JSON control protocol on a Unix socket),
//! for tests that change the VM while it runs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation.
    pub fn connect(path: &Path) -> Result<Qmp, String> {
        let stream = UnixStream::connect(path).map_err(|e| format!("QMP {}: {e}", path.display()))?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        let writer = stream.try_clone().map_err(|e| e.to_string())?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(format!("not a QMP greeting: {greeting}"));
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read(&mut self) -> Result<Value, String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(|e| format!("QMP read: {e}"))?;
        serde_json::from_str(&line).map_err(|e| format!("QMP sent {line:?}: {e}"))
    }

    /// Runs `command` and returns its `return` value (events are skipped).
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value, String> {
        let msg = json!({ "execute": command, "arguments": arguments });
        writeln!(self.writer, "{msg}").map_err(|e| format!("QMP write: {e}"))?;
        for _ in 0..32 {
            let v = self.read()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(format!("QMP {command}: {e}"));
            }
        }
        Err(format!("QMP {command}: no answer"))
    }

    /// Sets the link state of the NIC `netdev` ("net0").
    pub fn set_link(&mut self, netdev: &str, up: bool) -> Result<(), String> {
        self.execute("set_link", json!({ "name": netdev, "up": up })).map(|_| ())
    }
}
