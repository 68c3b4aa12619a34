//! `--translate-uid` / `--translate-gid`: virtiofsd's id translation rules.
//!
//! Each rule maps a range of ids between the guest and the host:
//!
//! | rule | guest → host | host → guest |
//! |---|---|---|
//! | `map:G:H:N` | `G..G+N` → `H..H+N` | `H..H+N` → `G..G+N` |
//! | `guest:G:H:N` | `G..G+N` → `H..H+N` | — |
//! | `host:H:G:N` | — | `H..H+N` → `G..G+N` |
//! | `squash-guest:G:H:N` | `G..G+N` → `H` | — |
//! | `squash-host:H:G:N` | — | `H..H+N` → `G` |
//! | `forbid-guest:G:N` | `G..G+N` → refused (EPERM) | — |
//!
//! Ids no rule covers pass through unchanged. Ranges of the same direction
//! must not overlap.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Map { guest: u32, host: u32, count: u32 },
    Guest { guest: u32, host: u32, count: u32 },
    Host { host: u32, guest: u32, count: u32 },
    SquashGuest { guest: u32, host: u32, count: u32 },
    SquashHost { host: u32, guest: u32, count: u32 },
    ForbidGuest { guest: u32, count: u32 },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdMapError {
    #[error("unknown translation {0:?}: expected map, guest, host, squash-guest, squash-host or forbid-guest")]
    UnknownKind(String),
    #[error("{kind} takes {expected} numbers separated by ':', got {got:?}")]
    Arity {
        kind: &'static str,
        expected: usize,
        got: String,
    },
    #[error("{0:?} is not a valid id (0..=4294967295)")]
    BadNumber(String),
    #[error("count must be at least 1")]
    ZeroCount,
    #[error("range {0}..+{1} goes past 4294967295")]
    Overflow(u32, u32),
    #[error("{0} overlaps {1} in the same direction")]
    Overlap(Rule, Rule),
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Rule::Map { guest, host, count } => write!(f, "map:{guest}:{host}:{count}"),
            Rule::Guest { guest, host, count } => write!(f, "guest:{guest}:{host}:{count}"),
            Rule::Host { host, guest, count } => write!(f, "host:{host}:{guest}:{count}"),
            Rule::SquashGuest { guest, host, count } => {
                write!(f, "squash-guest:{guest}:{host}:{count}")
            }
            Rule::SquashHost { host, guest, count } => {
                write!(f, "squash-host:{host}:{guest}:{count}")
            }
            Rule::ForbidGuest { guest, count } => write!(f, "forbid-guest:{guest}:{count}"),
        }
    }
}

fn numbers(kind: &'static str, rest: &str, expected: usize) -> Result<Vec<u32>, IdMapError> {
    let parts: Vec<&str> = rest.split(':').collect();
    if parts.len() != expected {
        return Err(IdMapError::Arity {
            kind,
            expected,
            got: rest.to_owned(),
        });
    }
    parts
        .iter()
        .map(|p| {
            p.parse::<u32>()
                .map_err(|_| IdMapError::BadNumber((*p).to_owned()))
        })
        .collect()
}

fn check_range(start: u32, count: u32) -> Result<(), IdMapError> {
    if count == 0 {
        return Err(IdMapError::ZeroCount);
    }
    // The last id covered is start + count - 1, which must fit in u32.
    if u64::from(start) + u64::from(count) - 1 > u64::from(u32::MAX) {
        return Err(IdMapError::Overflow(start, count));
    }
    Ok(())
}

impl FromStr for Rule {
    type Err = IdMapError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = s.split_once(':').unwrap_or((s, ""));
        let rule = match kind {
            "map" | "guest" | "host" | "squash-guest" | "squash-host" => {
                let static_kind = match kind {
                    "map" => "map",
                    "guest" => "guest",
                    "host" => "host",
                    "squash-guest" => "squash-guest",
                    _ => "squash-host",
                };
                let n = numbers(static_kind, rest, 3)?;
                let (a, b, count) = (n[0], n[1], n[2]);
                match kind {
                    "map" => Rule::Map {
                        guest: a,
                        host: b,
                        count,
                    },
                    "guest" => Rule::Guest {
                        guest: a,
                        host: b,
                        count,
                    },
                    "host" => Rule::Host {
                        host: a,
                        guest: b,
                        count,
                    },
                    "squash-guest" => Rule::SquashGuest {
                        guest: a,
                        host: b,
                        count,
                    },
                    _ => Rule::SquashHost {
                        host: a,
                        guest: b,
                        count,
                    },
                }
            }
            "forbid-guest" => {
                let n = numbers("forbid-guest", rest, 2)?;
                Rule::ForbidGuest {
                    guest: n[0],
                    count: n[1],
                }
            }
            other => return Err(IdMapError::UnknownKind(other.to_owned())),
        };
        // Both ends of a 1:1 range must fit.
        match rule {
            Rule::Map { guest, host, count } | Rule::Guest { guest, host, count } => {
                check_range(guest, count)?;
                check_range(host, count)?;
            }
            Rule::Host { host, guest, count } => {
                check_range(guest, count)?;
                check_range(host, count)?;
            }
            Rule::SquashGuest { guest, count, .. } | Rule::ForbidGuest { guest, count } => {
                check_range(guest, count)?
            }
            Rule::SquashHost { host, count, .. } => check_range(host, count)?,
        }
        Ok(rule)
    }
}

/// What a guest id becomes on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToHost {
    Id(u32),
    Forbidden,
}

/// One direction's range: ids `start..start+count` become `f(id)`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    count: u32,
    target: Target,
    rule: Rule,
}

#[derive(Debug, Clone, Copy)]
enum Target {
    Shift(u32),
    Squash(u32),
    Forbid,
}

impl Span {
    fn contains(&self, id: u32) -> bool {
        id >= self.start && u64::from(id) < u64::from(self.start) + u64::from(self.count)
    }

    fn overlaps(&self, other: &Span) -> bool {
        let (a0, a1) = (
            u64::from(self.start),
            u64::from(self.start) + u64::from(self.count),
        );
        let (b0, b1) = (
            u64::from(other.start),
            u64::from(other.start) + u64::from(other.count),
        );
        a0 < b1 && b0 < a1
    }
}

/// The translation for one kind of id (uids or gids).
#[derive(Debug, Clone, Default)]
pub struct IdMap {
    to_host: Vec<Span>,
    to_guest: Vec<Span>,
}

impl IdMap {
    /// Builds the map, rejecting overlapping ranges in the same direction.
    pub fn new(rules: &[Rule]) -> Result<Self, IdMapError> {
        let mut map = IdMap::default();
        for &rule in rules {
            let (to_host, to_guest) = match rule {
                Rule::Map { guest, host, count } => (
                    Some(Span {
                        start: guest,
                        count,
                        target: Target::Shift(host),
                        rule,
                    }),
                    Some(Span {
                        start: host,
                        count,
                        target: Target::Shift(guest),
                        rule,
                    }),
                ),
                Rule::Guest { guest, host, count } => (
                    Some(Span {
                        start: guest,
                        count,
                        target: Target::Shift(host),
                        rule,
                    }),
                    None,
                ),
                Rule::Host { host, guest, count } => (
                    None,
                    Some(Span {
                        start: host,
                        count,
                        target: Target::Shift(guest),
                        rule,
                    }),
                ),
                Rule::SquashGuest { guest, host, count } => (
                    Some(Span {
                        start: guest,
                        count,
                        target: Target::Squash(host),
                        rule,
                    }),
                    None,
                ),
                Rule::SquashHost { host, guest, count } => (
                    None,
                    Some(Span {
                        start: host,
                        count,
                        target: Target::Squash(guest),
                        rule,
                    }),
                ),
                Rule::ForbidGuest { guest, count } => (
                    Some(Span {
                        start: guest,
                        count,
                        target: Target::Forbid,
                        rule,
                    }),
                    None,
                ),
            };
            for (list, span) in [(&mut map.to_host, to_host), (&mut map.to_guest, to_guest)] {
                if let Some(span) = span {
                    if let Some(other) = list.iter().find(|s| s.overlaps(&span)) {
                        return Err(IdMapError::Overlap(rule, other.rule));
                    }
                    list.push(span);
                }
            }
        }
        Ok(map)
    }

    /// True if no rule is configured (ids pass through).
    pub fn is_identity(&self) -> bool {
        self.to_host.is_empty() && self.to_guest.is_empty()
    }

    fn apply(spans: &[Span], id: u32) -> Option<Target> {
        spans
            .iter()
            .find(|s| s.contains(id))
            .map(|s| match s.target {
                Target::Shift(base) => Target::Shift(base + (id - s.start)),
                other => other,
            })
    }

    /// Translates an id the guest uses into the host id.
    pub fn to_host(&self, guest_id: u32) -> ToHost {
        match Self::apply(&self.to_host, guest_id) {
            None => ToHost::Id(guest_id),
            Some(Target::Shift(id)) | Some(Target::Squash(id)) => ToHost::Id(id),
            Some(Target::Forbid) => ToHost::Forbidden,
        }
    }

    /// Translates a host id into what the guest sees.
    pub fn to_guest(&self, host_id: u32) -> u32 {
        match Self::apply(&self.to_guest, host_id) {
            Some(Target::Shift(id)) | Some(Target::Squash(id)) => id,
            _ => host_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &[&str]) -> IdMap {
        let rules: Vec<Rule> = rules.iter().map(|r| r.parse().unwrap()).collect();
        IdMap::new(&rules).unwrap()
    }

    #[test]
    fn parses_every_form_and_round_trips_display() {
        for s in [
            "map:0:1000:1",
            "guest:1000:2000:10",
            "host:2000:1000:10",
            "squash-guest:0:1000:4294967295",
            "squash-host:1000:0:1",
            "forbid-guest:500:5",
        ] {
            let rule: Rule = s.parse().unwrap();
            assert_eq!(rule.to_string(), s);
        }
    }

    #[test]
    fn rejects_malformed_rules() {
        assert!(matches!(
            "mapp:0:1:1".parse::<Rule>(),
            Err(IdMapError::UnknownKind(_))
        ));
        assert!(matches!(
            "map:0:1".parse::<Rule>(),
            Err(IdMapError::Arity { .. })
        ));
        assert!(matches!(
            "forbid-guest:0:1:2".parse::<Rule>(),
            Err(IdMapError::Arity { .. })
        ));
        assert!(matches!(
            "map:x:1:1".parse::<Rule>(),
            Err(IdMapError::BadNumber(_))
        ));
        assert!(matches!(
            "map:-1:1:1".parse::<Rule>(),
            Err(IdMapError::BadNumber(_))
        ));
        assert!(matches!(
            "map:0:1:0".parse::<Rule>(),
            Err(IdMapError::ZeroCount)
        ));
        assert!(matches!(
            "map:0:4294967295:2".parse::<Rule>(),
            Err(IdMapError::Overflow(4294967295, 2))
        ));
        assert!("squash-guest:0:1000:4294967296".parse::<Rule>().is_err());
    }

    #[test]
    fn map_is_bidirectional_and_others_pass_through() {
        let m = map(&["map:1000:5000:10"]);
        assert_eq!(m.to_host(1000), ToHost::Id(5000));
        assert_eq!(m.to_host(1009), ToHost::Id(5009));
        assert_eq!(m.to_host(1010), ToHost::Id(1010));
        assert_eq!(m.to_guest(5005), 1005);
        assert_eq!(m.to_guest(42), 42);
    }

    #[test]
    fn one_way_rules_only_translate_their_direction() {
        let m = map(&["guest:0:1000:1", "host:2000:0:1"]);
        assert_eq!(m.to_host(0), ToHost::Id(1000));
        assert_eq!(m.to_guest(1000), 1000);
        assert_eq!(m.to_guest(2000), 0);
        assert_eq!(m.to_host(2000), ToHost::Id(2000));
    }

    #[test]
    fn squash_and_forbid() {
        let m = map(&[
            "squash-guest:0:1000:1000",
            "forbid-guest:5000:1",
            "squash-host:0:65534:1000",
        ]);
        assert_eq!(m.to_host(0), ToHost::Id(1000));
        assert_eq!(m.to_host(999), ToHost::Id(1000));
        assert_eq!(m.to_host(1000), ToHost::Id(1000));
        assert_eq!(m.to_host(5000), ToHost::Forbidden);
        assert_eq!(m.to_guest(0), 65534);
        assert_eq!(m.to_guest(1500), 1500);
        // The full u32 range squashes without overflow.
        let all = map(&["squash-guest:0:1000:4294967295"]);
        assert_eq!(all.to_host(u32::MAX - 1), ToHost::Id(1000));
    }

    #[test]
    fn overlapping_ranges_in_one_direction_are_rejected() {
        let a: Rule = "map:0:1000:10".parse().unwrap();
        let b: Rule = "squash-guest:5:2000:1".parse().unwrap();
        assert!(matches!(
            IdMap::new(&[a, b]),
            Err(IdMapError::Overlap(_, _))
        ));
        // `map` also claims host ids 1000..1010 for the host→guest direction.
        let c: Rule = "host:1005:0:1".parse().unwrap();
        assert!(matches!(
            IdMap::new(&[a, c]),
            Err(IdMapError::Overlap(_, _))
        ));
        // A host-direction rule over other host ids does not collide.
        let d: Rule = "host:0:0:10".parse().unwrap();
        assert!(IdMap::new(&[a, d]).is_ok());
    }
}
