//! The address guard: which destinations a source fetch may connect to. A pure decision over
//! one IP address, made for every address DNS returns (the fetcher's resolver drops the refused
//! ones, so a connection only ever goes to a checked address), for every IP-literal host, and
//! again on every redirect hop.
//!
//! Everything that is not public unicast is refused: loopback, private, link-local (the cloud
//! metadata address 169.254.169.254 among them), shared address space (CGNAT), multicast,
//! unspecified, broadcast, documentation, benchmarking and reserved ranges, IPv6 unique-local,
//! and the IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4) whenever the
//! address they carry is refused. The operator may allow ranges (`resizer.source_allow_private`);
//! the built-in default allows none.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// Why an address is not public: the class of its range, the only detail a refusal tells the
/// client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16; IPv6 site-local fec0::/10.
    Private,
    /// 169.254.0.0/16 (cloud metadata services live here), fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10, carrier-grade NAT (RFC 6598).
    SharedAddressSpace,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 0.0.0.0/8 ("this network"), ::.
    Unspecified,
    /// 255.255.255.255.
    Broadcast,
    /// 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32, 3fff::/20.
    Documentation,
    /// 198.18.0.0/15, 2001:2::/48.
    Benchmarking,
    /// fc00::/7.
    UniqueLocal,
    /// Special-purpose and unallocated ranges: 192.0.0.0/24, 192.88.99.0/24, 240.0.0.0/4;
    /// IPv4-compatible ::/96, 100::/64, 2001::/23 (Teredo among them), 64:ff9b:1::/48, 5f00::/16,
    /// and IPv6 outside global unicast 2000::/3.
    Reserved,
}

impl RangeClass {
    /// A short name for messages and logs, e.g. `loopback`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::SharedAddressSpace => "shared (CGNAT)",
            Self::Multicast => "multicast",
            Self::Unspecified => "unspecified",
            Self::Broadcast => "broadcast",
            Self::Documentation => "documentation",
            Self::Benchmarking => "benchmarking",
            Self::UniqueLocal => "unique-local",
            Self::Reserved => "reserved",
        }
    }
}

impl fmt::Display for RangeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

#[allow(clippy::too_many_arguments)]
const fn v6(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

/// Refused IPv4 ranges, most specific first (the first match names the class).
const V4_RANGES: &[(Ipv4Net, RangeClass)] = &[
    (v4(255, 255, 255, 255, 32), RangeClass::Broadcast),
    (v4(0, 0, 0, 0, 8), RangeClass::Unspecified),
    (v4(10, 0, 0, 0, 8), RangeClass::Private),
    (v4(100, 64, 0, 0, 10), RangeClass::SharedAddressSpace),
    (v4(127, 0, 0, 0, 8), RangeClass::Loopback),
    (v4(169, 254, 0, 0, 16), RangeClass::LinkLocal),
    (v4(172, 16, 0, 0, 12), RangeClass::Private),
    (v4(192, 0, 0, 0, 24), RangeClass::Reserved),
    (v4(192, 0, 2, 0, 24), RangeClass::Documentation),
    (v4(192, 88, 99, 0, 24), RangeClass::Reserved),
    (v4(192, 168, 0, 0, 16), RangeClass::Private),
    (v4(198, 18, 0, 0, 15), RangeClass::Benchmarking),
    (v4(198, 51, 100, 0, 24), RangeClass::Documentation),
    (v4(203, 0, 113, 0, 24), RangeClass::Documentation),
    (v4(224, 0, 0, 0, 4), RangeClass::Multicast),
    (v4(240, 0, 0, 0, 4), RangeClass::Reserved),
];

/// Refused IPv6 ranges that carry no IPv4 address, most specific first.
const V6_RANGES: &[(Ipv6Net, RangeClass)] = &[
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), RangeClass::Unspecified),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), RangeClass::Loopback),
    (
        v6([0x2001, 0x2, 0, 0, 0, 0, 0, 0], 48),
        RangeClass::Benchmarking,
    ),
    (
        v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32),
        RangeClass::Documentation,
    ),
    (
        v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20),
        RangeClass::Documentation,
    ),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), RangeClass::Reserved),
    (
        v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48),
        RangeClass::Reserved,
    ),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), RangeClass::Reserved),
    (v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), RangeClass::Reserved),
    (
        v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7),
        RangeClass::UniqueLocal,
    ),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), RangeClass::LinkLocal),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), RangeClass::Private),
    (v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), RangeClass::Multicast),
];

const MAPPED: Ipv6Net = v6([0, 0, 0, 0, 0, 0xffff, 0, 0], 96);
const COMPATIBLE: Ipv6Net = v6([0, 0, 0, 0, 0, 0, 0, 0], 96);
const NAT64: Ipv6Net = v6([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const SIX_TO_FOUR: Ipv6Net = v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const GLOBAL_UNICAST: Ipv6Net = v6([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);

/// The class of `ip`'s range, or `None` for a public unicast address.
pub fn classify(ip: IpAddr) -> Option<RangeClass> {
    match ip {
        IpAddr::V4(ip) => classify_v4(ip),
        IpAddr::V6(ip) => classify_v6(ip),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<RangeClass> {
    V4_RANGES
        .iter()
        .find(|(net, _)| net.contains(&ip))
        .map(|&(_, class)| class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<RangeClass> {
    if let Some(&(_, class)) = V6_RANGES.iter().find(|(net, _)| net.contains(&ip)) {
        return Some(class);
    }
    let bits = ip.to_bits();
    // The low 32 bits carry the IPv4 address in the mapped, compatible and NAT64 forms.
    let low = Ipv4Addr::from_bits(bits as u32);
    if MAPPED.contains(&ip) || NAT64.contains(&ip) {
        return classify_v4(low);
    }
    if COMPATIBLE.contains(&ip) {
        // Deprecated (RFC 4291): no origin is reached this way, whatever it carries.
        return Some(classify_v4(low).unwrap_or(RangeClass::Reserved));
    }
    if SIX_TO_FOUR.contains(&ip) {
        // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
        return classify_v4(Ipv4Addr::from_bits((bits >> 80) as u32));
    }
    if !GLOBAL_UNICAST.contains(&ip) {
        return Some(RangeClass::Reserved);
    }
    None
}

/// Why the guard refused an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// The class of the range the address is in.
    pub class: RangeClass,
}

/// The guard: public unicast addresses pass, others only when the operator's allow list holds
/// them.
#[derive(Debug, Clone, Default)]
pub struct AddressGuard {
    allow: Vec<IpNet>,
}

impl AddressGuard {
    /// A guard that also lets through the addresses in `allow` (e.g. `127.0.0.0/8` on a
    /// development machine). An empty list allows public addresses only.
    pub fn new(allow: Vec<IpNet>) -> Self {
        Self { allow }
    }

    /// Whether a fetch may connect to `ip`. An IPv4-mapped address is allowed by a range that
    /// holds the IPv4 address it maps (it is the same destination).
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        let canonical = ip.to_canonical();
        if self
            .allow
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            Ok(())
        } else {
            Err(Refused { class })
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn class(ip: &str) -> Option<RangeClass> {
        classify(ip.parse().unwrap())
    }

    #[test]
    fn every_refused_ipv4_range_is_classified_at_both_ends() {
        use RangeClass::*;
        let cases: &[(&str, &str, RangeClass)] = &[
            ("0.0.0.0", "0.255.255.255", Unspecified),
            ("10.0.0.0", "10.255.255.255", Private),
            ("100.64.0.0", "100.127.255.255", SharedAddressSpace),
            ("127.0.0.0", "127.255.255.255", Loopback),
            ("169.254.0.0", "169.254.255.255", LinkLocal),
            ("172.16.0.0", "172.31.255.255", Private),
            ("192.0.0.0", "192.0.0.255", Reserved),
            ("192.0.2.0", "192.0.2.255", Documentation),
            ("192.88.99.0", "192.88.99.255", Reserved),
            ("192.168.0.0", "192.168.255.255", Private),
            ("198.18.0.0", "198.19.255.255", Benchmarking),
            ("198.51.100.0", "198.51.100.255", Documentation),
            ("203.0.113.0", "203.0.113.255", Documentation),
            ("224.0.0.0", "239.255.255.255", Multicast),
            ("240.0.0.0", "255.255.255.254", Reserved),
            ("255.255.255.255", "255.255.255.255", Broadcast),
        ];
        for (first, last, expected) in cases {
            assert_eq!(class(first), Some(*expected), "{first}");
            assert_eq!(class(last), Some(*expected), "{last}");
        }
        assert_eq!(class("169.254.169.254"), Some(LinkLocal), "cloud metadata");
        assert_eq!(class("127.0.0.1"), Some(Loopback));
    }

    #[test]
    fn public_ipv4_neighbours_of_the_refused_ranges_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.0.3.0",
            "192.88.98.255",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "198.51.99.255",
            "203.0.112.255",
            "223.255.255.255",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn every_refused_ipv6_range_is_classified() {
        use RangeClass::*;
        let cases: &[(&str, RangeClass)] = &[
            ("::", Unspecified),
            ("::1", Loopback),
            ("fe80::1", LinkLocal),
            ("febf:ffff::1", LinkLocal),
            ("fec0::1", Private),
            ("fc00::1", UniqueLocal),
            ("fdff:ffff::1", UniqueLocal),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("2001:2::1", Benchmarking),
            ("2001::1", Reserved),
            ("2001:1ff::1", Reserved),
            ("64:ff9b:1::1", Reserved),
            ("100::1", Reserved),
            ("5f00::1", Reserved),
            // Outside global unicast 2000::/3.
            ("4000::1", Reserved),
            ("1::1", Reserved),
            ("e000::1", Reserved),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), Some(*expected), "{ip}");
        }
        for ip in ["2606:4700::1111", "2a00:1450:4001::1", "2001:200::1"] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_are_judged_by_the_address_they_carry() {
        use RangeClass::*;
        let cases: &[(&str, Option<RangeClass>)] = &[
            // IPv4-mapped.
            ("::ffff:127.0.0.1", Some(Loopback)),
            ("::ffff:7f00:1", Some(Loopback)),
            ("::ffff:169.254.169.254", Some(LinkLocal)),
            ("::ffff:10.1.2.3", Some(Private)),
            ("::ffff:100.64.0.1", Some(SharedAddressSpace)),
            ("::ffff:0.0.0.0", Some(Unspecified)),
            ("::ffff:255.255.255.255", Some(Broadcast)),
            ("::ffff:8.8.8.8", None),
            // IPv4-compatible (deprecated): refused whatever it carries.
            ("::127.0.0.1", Some(Loopback)),
            ("::192.168.1.1", Some(Private)),
            ("::8.8.8.8", Some(Reserved)),
            // NAT64 well-known prefix.
            ("64:ff9b::127.0.0.1", Some(Loopback)),
            ("64:ff9b::a9fe:a9fe", Some(LinkLocal)),
            ("64:ff9b::172.16.0.1", Some(Private)),
            ("64:ff9b::8.8.8.8", None),
            // 6to4: 2002:AABB:CCDD::/48.
            ("2002:7f00:1::1", Some(Loopback)),
            ("2002:a9fe:a9fe::", Some(LinkLocal)),
            ("2002:c0a8:101::1", Some(Private)),
            ("2002:e000:1::1", Some(Multicast)),
            ("2002:808:808::1", None),
        ];
        for (ip, expected) in cases {
            assert_eq!(class(ip), *expected, "{ip}");
        }
    }

    #[test]
    fn the_default_guard_refuses_every_class_and_passes_public_addresses() {
        let guard = AddressGuard::default();
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "::1",
            "::ffff:127.0.0.1",
            "fd00::1",
            "fe80::1",
            "224.0.0.1",
            "0.0.0.0",
            "::",
        ] {
            let refused = guard.check(ip.parse().unwrap()).unwrap_err();
            assert_eq!(Some(refused.class), class(ip), "{ip}");
        }
        assert_eq!(guard.check("93.184.215.14".parse().unwrap()), Ok(()));
        assert_eq!(guard.check("2606:4700::1111".parse().unwrap()), Ok(()));
    }

    #[test]
    fn an_allow_list_lets_through_exactly_its_ranges() {
        let guard = AddressGuard::new(vec![
            "127.0.0.0/8".parse().unwrap(),
            "::1/128".parse().unwrap(),
            "10.1.0.0/16".parse().unwrap(),
        ]);
        for ip in [
            "127.0.0.1",
            "127.9.9.9",
            "::1",
            "10.1.200.3",
            "::ffff:127.0.0.1",
        ] {
            assert_eq!(guard.check(ip.parse().unwrap()), Ok(()), "{ip}");
        }
        for (ip, expected) in [
            ("10.2.0.1", RangeClass::Private),
            ("192.168.1.1", RangeClass::Private),
            ("169.254.169.254", RangeClass::LinkLocal),
            ("fe80::1", RangeClass::LinkLocal),
            // Allowing 127.0.0.0/8 does not allow its NAT64 or 6to4 forms: those reach another host.
            ("64:ff9b::127.0.0.1", RangeClass::Loopback),
            ("2002:7f00:1::1", RangeClass::Loopback),
        ] {
            assert_eq!(
                guard.check(ip.parse().unwrap()),
                Err(Refused { class: expected }),
                "{ip}"
            );
        }
    }

    #[test]
    fn a_precise_allow_list_allows_one_loopback_address_only() {
        let guard = AddressGuard::new(vec!["127.0.0.2/32".parse().unwrap()]);
        assert_eq!(guard.check("127.0.0.2".parse().unwrap()), Ok(()));
        assert_eq!(
            guard.check("127.0.0.1".parse().unwrap()),
            Err(Refused {
                class: RangeClass::Loopback
            })
        );
    }
}
