//! Which proxies are believed about a client's address, and how an
//! address is counted, for per-address limits. Behind a load balancer
//! the TCP peer is the proxy; its `X-Forwarded-For` is believed only when
//! the peer is one of `http.trusted_proxies`, or anyone could pick the
//! address they are limited by. An IPv6 client is known by its network
//! (`http.ipv6_client_prefix`, a /64 by default): one subscriber is handed
//! a whole /64, and counting each of its 2^64 addresses apart would give
//! them that many budgets.

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

/// An address or a CIDR block such as `10.0.0.0/8` or `fd00::/8`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for Block {
    type Err = String;

    fn from_str(text: &str) -> Result<Block, String> {
        let (address, prefix) = text.split_once('/').unwrap_or((text, ""));
        let network: IpAddr =
            address.trim().parse().map_err(|_| format!("`{text}` is not an address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = if prefix.is_empty() {
            max
        } else {
            prefix
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{text}`: bad prefix length"))?
        };
        Ok(Block { network, prefix })
    }
}

impl Block {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let bits = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)) << 96, true),
            IpAddr::V6(v6) => (u128::from(v6), false),
        };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let ((network, v4), (candidate, candidate_v4)) = (bits(self.network), bits(ip));
        if v4 != candidate_v4 {
            return false;
        }
        // IPv4 sits in the top 32 bits, so one mask rule serves both.
        let width = u32::from(self.prefix);
        let mask = if width == 0 { 0 } else { u128::MAX << (128 - width) };
        network & mask == candidate & mask
    }
}

/// The proxies whose `X-Forwarded-For` is believed, and how much of an
/// IPv6 address names a client; put in every request's extensions by the
/// shared HTTP stack.
#[derive(Clone, Debug)]
pub struct TrustedProxies {
    blocks: Arc<Vec<Block>>,
    ipv6_prefix: u8,
}

impl Default for TrustedProxies {
    fn default() -> Self {
        TrustedProxies { blocks: Arc::default(), ipv6_prefix: 64 }
    }
}

impl TrustedProxies {
    pub fn parse(entries: &[String]) -> Result<TrustedProxies, String> {
        let blocks = entries.iter().map(|e| e.parse()).collect::<Result<Vec<Block>, String>>()?;
        Ok(TrustedProxies { blocks: Arc::new(blocks), ..TrustedProxies::default() })
    }

    /// Counts IPv6 clients by their first `prefix` bits (1 to 128).
    pub fn with_ipv6_prefix(self, prefix: u8) -> Result<TrustedProxies, String> {
        if !(1..=128).contains(&prefix) {
            return Err(format!("{prefix} is not an IPv6 prefix length (1 to 128)"));
        }
        Ok(TrustedProxies { ipv6_prefix: prefix, ..self })
    }

    /// The address limits count: IPv4 (and IPv4-mapped) whole, IPv6 by
    /// its network.
    pub fn counted_as(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let mask = u128::MAX << (128 - u32::from(self.ipv6_prefix));
                IpAddr::V6((u128::from(v6) & mask).into())
            }
            IpAddr::V6(v6) => IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED)),
            v4 => v4,
        }
    }

    fn trusts(&self, ip: IpAddr) -> bool {
        self.blocks.iter().any(|block| block.contains(ip))
    }

    /// Walks `X-Forwarded-For` from the right (the nearest hop) past
    /// trusted proxies; the first address not trusted is the client. A
    /// request may carry the header more than once: the lines are one list,
    /// in order, so a hop cannot hide in a second header.
    pub fn client<'a>(
        &self,
        peer: IpAddr,
        forwarded_for: impl DoubleEndedIterator<Item = &'a str>,
    ) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let hops = forwarded_for.rev().flat_map(|line| line.split(',').rev()).map(str::trim);
        let mut client = peer;
        for hop in hops {
            match hop.parse::<IpAddr>() {
                Ok(ip) => {
                    client = ip;
                    if !self.trusts(ip) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    #[test]
    fn blocks_match_their_addresses() {
        let block: Block = "10.1.0.0/16".parse().unwrap_or(Block { network: ip("0.0.0.0"), prefix: 32 });
        assert!(block.contains(ip("10.1.200.3")));
        assert!(!block.contains(ip("10.2.0.1")));
        assert!(block.contains(ip("::ffff:10.1.0.9")));
        assert!("127.0.0.1".parse::<Block>().is_ok_and(|b| b.contains(ip("127.0.0.1"))));
        assert!(
            "fd00::/8"
                .parse::<Block>()
                .is_ok_and(|b| b.contains(ip("fd12::1")) && !b.contains(ip("fe80::1")))
        );
        assert!("10.0.0.0/33".parse::<Block>().is_err());
        assert!("nonsense".parse::<Block>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_peer() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap_or_default();
        let xff = || ["203.0.113.7, 10.0.0.5"].into_iter();
        assert_eq!(trusted.client(ip("10.0.0.2"), xff()), ip("203.0.113.7"));
        assert_eq!(trusted.client(ip("198.51.100.1"), xff()), ip("198.51.100.1"), "untrusted peer");
        assert_eq!(
            trusted.client(ip("10.0.0.2"), ["1.2.3.4, 203.0.113.7"].into_iter()),
            ip("203.0.113.7"),
            "spoofed left part"
        );
        assert_eq!(trusted.client(ip("10.0.0.2"), [].into_iter()), ip("10.0.0.2"));
        assert_eq!(trusted.client(ip("10.0.0.2"), ["garbage"].into_iter()), ip("10.0.0.2"));
    }

    #[test]
    fn every_forwarded_for_line_is_read_in_order() {
        let trusted = TrustedProxies::parse(&["10.0.0.0/8".into()]).unwrap_or_default();
        // The client's own line first, the proxy's appended as a second
        // header: the nearest untrusted hop is still found.
        let lines = ["1.2.3.4", "203.0.113.7, 10.0.0.5"];
        assert_eq!(trusted.client(ip("10.0.0.2"), lines.into_iter()), ip("203.0.113.7"));
        let lines = ["203.0.113.7", "10.0.0.5"];
        assert_eq!(trusted.client(ip("10.0.0.2"), lines.into_iter()), ip("203.0.113.7"));
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_network() {
        let rules = TrustedProxies::default();
        let counted = |text: &str| rules.counted_as(ip(text));
        assert_eq!(counted("2001:db8:1:2:aaaa::1"), counted("2001:db8:1:2:ffff:ffff:ffff:ffff"));
        assert_ne!(counted("2001:db8:1:2::1"), counted("2001:db8:1:3::1"));
        assert_eq!(counted("203.0.113.7"), ip("203.0.113.7"));
        assert_eq!(counted("::ffff:203.0.113.7"), ip("203.0.113.7"));
        let whole = TrustedProxies::default().with_ipv6_prefix(128).unwrap_or_default();
        assert_ne!(whole.counted_as(ip("2001:db8::1")), whole.counted_as(ip("2001:db8::2")));
        assert!(TrustedProxies::default().with_ipv6_prefix(0).is_err());
        assert!(TrustedProxies::default().with_ipv6_prefix(129).is_err());
    }
}
