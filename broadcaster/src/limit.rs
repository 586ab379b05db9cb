//! Live connections per client address, and the viewer gauges.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

#[derive(Clone)]
pub struct PerAddress {
    limit: u32,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

/// One admitted connection; dropping it frees the place.
pub struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl PerAddress {
    pub fn new(limit: u32) -> Self {
        PerAddress { limit, open: Arc::default() }
    }

    pub fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(ip).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(Slot { ip, open: self.open.clone() })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Raises `tally_viewers{transport}` while alive.
pub struct Gauge(&'static str);

impl Gauge {
    pub fn viewer(transport: &'static str) -> Gauge {
        metrics::gauge!("tally_viewers", "transport" => transport).increment(1.0);
        Gauge(transport)
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        metrics::gauge!("tally_viewers", "transport" => self.0).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_counted_per_address_and_freed_on_drop() {
        let limit = PerAddress::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limit.admit(a).unwrap();
        let _second = limit.admit(a).unwrap();
        assert!(limit.admit(a).is_none());
        assert!(limit.admit(b).is_some());
        drop(first);
        assert!(limit.admit(a).is_some());
    }
}
