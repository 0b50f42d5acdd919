//! A NOTIFY_SOCKET as systemd opens one: a bound datagram socket the daemon under test sends
//! READY=1 / STOPPING=1 to. Waiting for READY=1 is how a test knows the daemon holds its lock
//! and serves (probing with a second run would race the daemon for that lock).

use std::time::{Duration, Instant};

use tokio::net::UnixDatagram;

use super::Scratch;

const WAIT: Duration = Duration::from_secs(30);

pub struct Notify {
    sock: UnixDatagram,
    pub path: std::path::PathBuf,
    pub seen: Vec<String>,
}

impl Notify {
    pub fn new(s: &Scratch, name: &str) -> Self {
        let path = s.path(name);
        Self {
            sock: UnixDatagram::bind(&path).unwrap(),
            path,
            seen: Vec::new(),
        }
    }
    /// Waits for a notification containing `what` (one already seen counts).
    pub async fn wait_for(&mut self, what: &str) -> bool {
        self.wait_from(0, what).await.is_some()
    }

    /// Waits for a notification containing `what` among those from the `from`th on (the
    /// socket keeps their order), and returns its index: how a test waits for the READY=1 that
    /// ends one particular reload.
    pub async fn wait_from(&mut self, from: usize, what: &str) -> Option<usize> {
        let deadline = Instant::now() + WAIT;
        if let Some(i) = self.seen.iter().skip(from).position(|m| m.contains(what)) {
            return Some(from + i);
        }
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            match tokio::time::timeout(Duration::from_millis(200), self.sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let hit = msg.contains(what) && self.seen.len() >= from;
                    self.seen.push(msg);
                    if hit {
                        return Some(self.seen.len() - 1);
                    }
                }
                _ => continue,
            }
        }
        None
    }
}
