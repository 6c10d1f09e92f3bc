//! Host-side traffic for the network tests, sent from inside the run's own
//! network namespace to the guest. Every loop is bounded in count and time.

use std::process::Command;
use std::time::Duration;

/// What `ping` reported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PingResult {
    pub sent: u32,
    pub received: u32,
    /// Round-trip time of each reply, in milliseconds.
    pub rtts_ms: Vec<f64>,
}

/// Parses `ping` output: every `time=X ms` and the summary counts.
pub fn parse_ping(out: &str) -> PingResult {
    let mut r = PingResult::default();
    for line in out.lines() {
        if let Some(t) = line.split("time=").nth(1) {
            if let Some(ms) = t.split_whitespace().next().and_then(|x| x.parse().ok()) {
                r.rtts_ms.push(ms);
            }
        }
        if line.contains("packets transmitted") {
            let num = |word: &str| {
                line.split(", ").find(|p| p.contains(word)).and_then(|p| p.split_whitespace().next()?.parse().ok())
            };
            r.sent = num("transmitted").unwrap_or(0);
            r.received = num("received").unwrap_or(0);
        }
    }
    r
}

fn in_netns(netns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", netns, program]);
    c
}

/// `count` pings, `interval` apart, each waiting at most 2 s.
pub fn ping(netns: &str, addr: &str, count: u32, interval: Duration) -> Result<PingResult, String> {
    let out = in_netns(netns, "ping")
        .args(["-n", "-c", &count.to_string(), "-i", &format!("{:.3}", interval.as_secs_f64()), "-W", "2", addr])
        .output()
        .map_err(|e| format!("could not run ping: {e}"))?;
    Ok(parse_ping(&String::from_utf8_lossy(&out.stdout)))
}

/// `flows` UDP flows (distinct source and destination ports), `per_flow`
/// datagrams each, to `addr`. The guest has no listener: the point is which
/// receive queue each flow lands on.
pub fn udp_flows(netns: &str, addr: &str, flows: u16, per_flow: u16) -> Result<String, String> {
    let script = format!(
        "import socket, time\n\
         for i in range({flows}):\n\
         \x20   s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
         \x20   s.bind(('0.0.0.0', 40000 + i))\n\
         \x20   for _ in range({per_flow}):\n\
         \x20       s.sendto(b'mqnet-flow' * 6, ('{addr}', 20000 + i))\n\
         \x20       time.sleep(0.0005)\n\
         \x20   s.close()\n"
    );
    let out =
        in_netns(netns, "python3").args(["-c", &script]).output().map_err(|e| format!("could not run python3: {e}"))?;
    if !out.status.success() {
        return Err(format!("UDP sender failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(format!("{} datagrams on {flows} flows", flows as u32 * per_flow as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "PING 10.99.0.2 (10.99.0.2) 56(84) bytes of data.
64 bytes from 10.99.0.2: icmp_seq=1 ttl=64 time=3.26 ms
64 bytes from 10.99.0.2: icmp_seq=2 ttl=64 time=0.555 ms
64 bytes from 10.99.0.2: icmp_seq=3 ttl=64 time=0.603 ms

--- 10.99.0.2 ping statistics ---
4 packets transmitted, 3 received, 25% packet loss, time 816ms
rtt min/avg/max/mdev = 0.555/1.472/3.260/1.264 ms
";

    #[test]
    fn ping_output_is_parsed() {
        let r = parse_ping(OUT);
        assert_eq!((r.sent, r.received), (4, 3));
        assert_eq!(r.rtts_ms, [3.26, 0.555, 0.603]);
        assert_eq!(parse_ping(""), PingResult::default());
    }
}
