//! Loopback ports for tests (not product code), reserved across the test processes of one
//! machine: see [`free_port`].

/// A loopback port free for both TCP and UDP (Raft and gossip share the number scheme),
/// reserved for the rest of this process.
///
/// A port found by binding port 0 and releasing it lies in the kernel's ephemeral range, so
/// any process's next outgoing connection or `bind(0)` may take it before the server meant
/// for it binds (etcd then dies on "address in use" and the test talks to whoever holds the
/// port). So the port is drawn at random from *below* the ephemeral range
/// (`/proc/sys/net/ipv4/ip_local_port_range`), where the kernel never hands out ports, and a
/// lock file (`flock`, dropped by the kernel when this process ends) under
/// `$TMPDIR/quorate-testkit-ports/` keeps other test processes from drawing it too.
pub fn free_port() -> std::io::Result<u16> {
    static HELD: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = unassigned_range();
    let dir = std::env::temp_dir().join("quorate-testkit-ports");
    std::fs::create_dir_all(&dir)?;
    let mut draw = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        let mut x = h.finish() | 1;
        move || {
            // xorshift64: spreading the draws is all that matters here.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    };
    let span = u64::from(high - low);
    for _ in 0..512 {
        let port = low + u16::try_from(draw() % span).unwrap_or(0);
        let path = dir.join(port.to_string());
        let Ok(file) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
        else {
            continue;
        };
        // Held by another process, or by this one through an earlier draw.
        if file.try_lock().is_err() {
            continue;
        }
        let free = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free {
            HELD.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(file);
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free loopback port: 512 draws in {low}..{high} were taken"),
    ))
}

/// Ports the kernel never assigns by itself: below the ephemeral range (or above it when
/// the range starts too low to leave room).
fn unassigned_range() -> (u16, u16) {
    let (lo, hi) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        })
        .unwrap_or((32768, 60999));
    if lo >= 12_000 {
        (lo.saturating_sub(12_000).max(1024), lo)
    } else if hi <= 60_000 {
        (hi + 1, 65_535)
    } else {
        // A range covering nearly everything: no unassigned room, take the top.
        (60_000, 65_535)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let (low, high) = unassigned_range();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let p = free_port().expect("a port");
            assert!((low..high).contains(&p), "{p} outside {low}..{high}");
            assert!(seen.insert(p), "{p} handed out twice");
            std::net::TcpListener::bind(("127.0.0.1", p)).expect("bindable");
        }
    }

    #[test]
    fn a_port_locked_by_another_holder_is_not_handed_out() {
        let p = free_port().expect("a port");
        let path = std::env::temp_dir()
            .join("quorate-testkit-ports")
            .join(p.to_string());
        let other = std::fs::File::open(&path).expect("lock file exists");
        assert!(other.try_lock().is_err(), "{p} should stay locked");
    }
}
