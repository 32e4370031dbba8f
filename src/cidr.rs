//! Address ranges for `--allow`: `10.0.0.0/8`, `2001:db8::/32`, a bare address; parsing,
//! printing and membership, with IPv4 and IPv4-mapped IPv6 peers treated alike.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// An address range, `10.0.0.0/8` or `2001:db8::/32`; a bare address is a range of one.
///
/// Why keep IPv4 ranges as IPv6? A dual-stack listener sees IPv4 peers as `::ffff:a.b.c.d`;
/// with every range in that one space, an IPv4 range covers its peers whichever way they
/// arrived, and matching is one mask and compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    bits: u128,
    /// Prefix length in the IPv6 space (an IPv4 /8 is 104 here).
    prefix: u8,
    v4: bool,
}

/// The number with the first `prefix` of 128 bits set.
pub(crate) fn mask(prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => u128::MAX << (128 - u32::from(p.min(128))),
    }
}

/// An address as a point in the IPv6 space, IPv4 (plain or mapped) as `::ffff:a.b.c.d`.
pub(crate) fn point(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Cidr {
    /// Whether `ip` lies in the range; IPv4-mapped IPv6 addresses count as IPv4.
    pub fn contains(&self, ip: IpAddr) -> bool {
        point(ip) & mask(self.prefix) == self.bits
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(text: &str) -> Result<Cidr, String> {
        let (addr, len) = match text.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (text, None),
        };
        let ip: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an address or ADDRESS/LENGTH range"))?;
        let (max, offset) = match ip {
            IpAddr::V4(_) => (32u8, 96u8),
            IpAddr::V6(_) => (128, 0),
        };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|&l| l <= max)
                .ok_or_else(|| format!("`{text}`: the prefix length must be 0 to {max}"))?,
        };
        let prefix = len + offset;
        let bits = point(ip);
        if bits & !mask(prefix) != 0 {
            let base = match ip {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::from((bits & mask(prefix)) as u32)),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::from(bits & mask(prefix))),
            };
            return Err(format!(
                "`{text}` has bits set past its /{len} prefix; did you mean {base}/{len}?"
            ));
        }
        Ok(Cidr {
            bits,
            prefix,
            v4: ip.is_ipv4(),
        })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.v4 {
            write!(
                f,
                "{}/{}",
                Ipv4Addr::from(self.bits as u32),
                self.prefix - 96
            )
        } else {
            write!(f, "{}/{}", Ipv6Addr::from(self.bits), self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_parse_and_print() {
        for (text, shown) in [
            ("10.0.0.0/8", "10.0.0.0/8"),
            ("127.0.0.1", "127.0.0.1/32"),
            ("0.0.0.0/0", "0.0.0.0/0"),
            ("2001:db8::/32", "2001:db8::/32"),
            ("::1", "::1/128"),
            ("::/0", "::/0"),
            ("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104"),
        ] {
            let c: Cidr = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(c.to_string(), shown, "{text}");
        }
    }

    #[test]
    fn bad_cidrs_are_refused_with_a_reason() {
        for (text, says) in [
            ("10.0.0.0/33", "0 to 32"),
            ("::/129", "0 to 128"),
            ("10.0.0.0/", "0 to 32"),
            ("10.0.0.0/-1", "0 to 32"),
            ("10.1.2.3/8", "did you mean 10.0.0.0/8"),
            ("2001:db8::1/32", "did you mean 2001:db8::/32"),
            ("example.com", "not an address"),
            ("", "not an address"),
            ("10.0.0/8", "not an address"),
        ] {
            let e = text.parse::<Cidr>().expect_err(text);
            assert!(e.contains(says), "{text}: {e}");
        }
    }

    #[test]
    fn membership_table() {
        for (cidr, addr, inside) in [
            ("10.0.0.0/8", "10.255.1.2", true),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "::ffff:10.1.2.3", true),
            ("10.0.0.0/8", "::ffff:11.1.2.3", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("0.0.0.0/0", "8.8.8.8", true),
            ("0.0.0.0/0", "::1", false),
            ("0.0.0.0/0", "::ffff:8.8.8.8", true),
            ("::1", "::1", true),
            ("::1", "127.0.0.1", false),
            ("2001:db8::/32", "2001:db8:ffff::1", true),
            ("2001:db8::/32", "2001:db9::1", false),
            ("::ffff:10.0.0.0/104", "10.9.9.9", true),
            ("::/0", "2001:db8::1", true),
            // An IPv6 range that covers ::ffff:0:0/96 covers IPv4 peers too.
            ("::/0", "192.0.2.1", true),
            ("fe80::/10", "fe80::1", true),
            ("fe80::/10", "fec0::1", false),
        ] {
            let c: Cidr = cidr.parse().unwrap();
            assert_eq!(c.contains(ip(addr)), inside, "{addr} in {cidr}");
        }
    }

    proptest! {
        #[test]
        fn a_range_contains_exactly_the_addresses_sharing_its_prefix(
            a in any::<u32>(), b in any::<u32>(), len in 0u8..=32
        ) {
            let base = if len == 0 { 0 } else { a & (u32::MAX << (32 - u32::from(len))) };
            let c: Cidr = format!("{}/{len}", Ipv4Addr::from(base)).parse().unwrap();
            let same = len == 0 || (a ^ b) >> (32 - u32::from(len)) == 0;
            prop_assert!(c.contains(IpAddr::V4(Ipv4Addr::from(a))));
            prop_assert_eq!(c.contains(IpAddr::V4(Ipv4Addr::from(b))), same);
            prop_assert_eq!(c.contains(IpAddr::V6(Ipv4Addr::from(b).to_ipv6_mapped())), same);
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        }

        #[test]
        fn ipv6_ranges_match_by_prefix(a in any::<u128>(), b in any::<u128>(), len in 0u8..=128) {
            let base = a & mask(len);
            let c: Cidr = format!("{}/{len}", Ipv6Addr::from(base)).parse().unwrap();
            let b = IpAddr::V6(Ipv6Addr::from(b));
            prop_assert_eq!(c.contains(b), point(b) & mask(len) == base);
            prop_assert_eq!(c.to_string().parse::<Cidr>().unwrap(), c);
        }
    }
}
