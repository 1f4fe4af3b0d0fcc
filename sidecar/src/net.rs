//! Address types: IP families and CIDR blocks (the only address syntax the sidecar parses).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An IP protocol family; rules that name an address belong to exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// The family of an address.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// Longest prefix length of the family (32 or 128).
    pub fn max_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// Why a string is not a CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The part before `/` is not an IP address.
    #[error("`{0}` is not an IPv4 or IPv6 address")]
    BadAddress(String),
    /// The part after `/` is not a number.
    #[error("prefix length `{0}` is not a number")]
    BadPrefix(String),
    /// The prefix length is longer than the family allows.
    #[error("prefix length {prefix} is longer than {max} ({family})")]
    PrefixTooLong {
        /// Prefix length given.
        prefix: u8,
        /// Longest allowed.
        max: u8,
        /// Family of the address.
        family: Family,
    },
}

/// A network block `address/prefix`, always stored in canonical form (host bits zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// A block; host bits of `addr` are cleared. Fails when `prefix` is too long.
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, CidrError> {
        let family = Family::of(&addr);
        let max = family.max_prefix();
        if prefix > max {
            return Err(CidrError::PrefixTooLong {
                prefix,
                max,
                family,
            });
        }
        let addr = match addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(u32::from(32 - prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(u32::from(128 - prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Cidr { addr, prefix })
    }

    /// The single-address block of `addr` (`/32` or `/128`).
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr {
            addr,
            prefix: Family::of(&addr).max_prefix(),
        }
    }

    /// Network address (host bits zero).
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// Prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Family of the block.
    pub fn family(&self) -> Family {
        Family::of(&self.addr)
    }

    /// True when the block is a single address.
    pub fn is_host(&self) -> bool {
        self.prefix == self.family().max_prefix()
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    /// Parses `addr/prefix`, or a bare address as a single-host block.
    fn from_str(s: &str) -> Result<Cidr, CidrError> {
        let (addr_s, prefix_s) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr_s
            .parse()
            .map_err(|_| CidrError::BadAddress(addr_s.to_owned()))?;
        match prefix_s {
            None => Ok(Cidr::host(addr)),
            Some(p) => {
                let prefix: u8 = p.parse().map_err(|_| CidrError::BadPrefix(p.to_owned()))?;
                Cidr::new(addr, prefix)
            }
        }
    }
}

impl fmt::Display for Cidr {
    /// `addr/prefix`, or the bare address for a single-host block.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_host() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_canonicalises() {
        let c: Cidr = "10.96.1.7/12".parse().unwrap();
        assert_eq!(c.to_string(), "10.96.0.0/12");
        let c: Cidr = "fd00:198:18::5/48".parse().unwrap();
        assert_eq!(c.to_string(), "fd00:198:18::/48");
        assert_eq!(c.family(), Family::V6);
        let c: Cidr = "198.18.0.1".parse().unwrap();
        assert!(c.is_host());
        assert_eq!(c.to_string(), "198.18.0.1");
        let c: Cidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(c.to_string(), "0.0.0.0/0");
        let c: Cidr = "::/0".parse().unwrap();
        assert_eq!(c.to_string(), "::/0");
    }

    #[test]
    fn rejects_bad_blocks() {
        assert!(matches!(
            "10.0.0.0/33".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { prefix: 33, .. })
        ));
        assert!(matches!(
            "::/129".parse::<Cidr>(),
            Err(CidrError::PrefixTooLong { .. })
        ));
        assert!(matches!(
            "10.0.0/8".parse::<Cidr>(),
            Err(CidrError::BadAddress(_))
        ));
        assert!(matches!(
            "10.0.0.0/x".parse::<Cidr>(),
            Err(CidrError::BadPrefix(_))
        ));
        assert!(matches!(
            "10.0.0.0/".parse::<Cidr>(),
            Err(CidrError::BadPrefix(_))
        ));
    }
}
