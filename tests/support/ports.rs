//! Loopback ports that are free now and will not be handed to another test.
//!
//! Within one process a set of handed-out ports is kept; across processes (several test binaries at
//! once) each port is claimed with an `flock` on `$TMPDIR/srbridge-test-ports/<port>.lock`, held until
//! the process exits. Ports come from 20000..32768, below Linux's ephemeral range (32768-60999), so
//! sockets bound to port 0 by the bridge or the OS never take a port a test was promised.
//! Every port returned is free for both UDP and TCP on 127.0.0.1.

use std::collections::HashMap;
use std::fs::File;
use std::net::{TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

const FIRST: u16 = 20000;
const END: u16 = 32768;

fn claimed() -> &'static Mutex<HashMap<u16, File>> {
    static CLAIMED: OnceLock<Mutex<HashMap<u16, File>>> = OnceLock::new();
    CLAIMED.get_or_init(|| Mutex::new(HashMap::new()))
}

fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("srbridge-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// One UDP+TCP port on 127.0.0.1 (e.g. a SIP listener).
pub fn free_port() -> u16 {
    free_range(1, 1)
}

/// An even port `p` with `p + 1` also free (RTP + RTCP); returns `p`.
pub fn free_port_pair() -> u16 {
    free_range(2, 2)
}

/// `count` consecutive free ports starting at an even port; returns the first.
pub fn free_port_range(count: u16) -> u16 {
    free_range(count, 2)
}

fn free_range(count: u16, align: u16) -> u16 {
    assert!(
        count > 0 && count < 1000,
        "unreasonable port range size {count}"
    );
    let mut map = claimed().lock().unwrap_or_else(|e| e.into_inner());
    let span = (END - FIRST - count) / align;
    for _ in 0..2000 {
        let start = FIRST + (rand::random::<u16>() % span.max(1)) * align;
        let mut locks = Vec::new();
        let ok = (start..start + count).all(|port| {
            if map.contains_key(&port) {
                return false;
            }
            match try_claim(port) {
                Some(file) => {
                    locks.push((port, file));
                    true
                }
                None => false,
            }
        });
        if ok {
            map.extend(locks);
            return start;
        }
        // dropping `locks` releases partial claims
    }
    panic!("no {count} free loopback ports found in {FIRST}..{END}");
}

fn try_claim(port: u16) -> Option<File> {
    let path = lock_dir().join(format!("{port}.lock"));
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .ok()?;
    // SAFETY: flock on a valid fd we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        return None;
    }
    let udp = UdpSocket::bind(("127.0.0.1", port)).ok()?;
    let tcp = TcpListener::bind(("127.0.0.1", port)).ok()?;
    drop((udp, tcp));
    Some(file)
}
