//! Which destinations the guest may reach: `--allow` / `--deny` rules,
//! evaluated in the order given, first match wins. Without any `--allow`
//! everything not denied is allowed; with at least one `--allow`, everything
//! not allowed is denied.
//!
//! Each rule is a pattern list with the `NO_PROXY` matcher (see
//! [`crate::noproxy`]): a domain suffix, `*`, an IP address or a CIDR block,
//! or several of those separated by commas. Rules look at the host as the
//! client wrote it (names are not resolved): a CIDR rule only catches
//! requests that name an IP address. The unspecified addresses (`0.0.0.0/8`,
//! `::`), which connect to the host's loopback, also match rules on
//! `127.0.0.1` and `::1`.

use std::fmt;

use crate::noproxy::{Host, InertEntry, PatternList};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn flag(self) -> &'static str {
        match self {
            Action::Allow => "--allow",
            Action::Deny => "--deny",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub action: Action,
    pub patterns: PatternList,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.action.flag(), self.patterns.as_str())
    }
}

#[derive(Clone, Debug, Default)]
pub struct Policy {
    rules: Vec<Rule>,
}

/// The outcome for one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// 1-based index of the rule that matched; `None` for the default.
    pub rule: Option<usize>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("rule {index} ({flag} {text:?}) is empty")]
    Empty {
        index: usize,
        flag: &'static str,
        text: String,
    },
    #[error("rule {index} ({flag} {text:?}): entry {inert}")]
    Inert {
        index: usize,
        flag: &'static str,
        text: String,
        inert: InertEntry,
    },
    #[error(
        "rule {index} ({flag} {text:?}): {tail:?} would be ignored; separate entries with commas"
    )]
    Tail {
        index: usize,
        flag: &'static str,
        text: String,
        tail: String,
    },
}

impl Policy {
    /// Builds the policy from rules in command-line order. Unlike
    /// `NO_PROXY`, an entry that could never match is an error here: a
    /// security rule that silently does nothing is worse than none.
    pub fn new(rules: &[(Action, String)]) -> Result<Policy, PolicyError> {
        let mut out = Vec::with_capacity(rules.len());
        for (i, (action, text)) in rules.iter().enumerate() {
            let index = i + 1;
            let flag = action.flag();
            let patterns = PatternList::parse(text);
            if let Some(inert) = patterns.inert().first() {
                return Err(PolicyError::Inert {
                    index,
                    flag,
                    text: text.clone(),
                    inert: inert.clone(),
                });
            }
            if let Some(tail) = patterns.ignored_tail() {
                return Err(PolicyError::Tail {
                    index,
                    flag,
                    text: text.clone(),
                    tail: tail.to_owned(),
                });
            }
            if patterns.is_empty() {
                return Err(PolicyError::Empty {
                    index,
                    flag,
                    text: text.clone(),
                });
            }
            out.push(Rule {
                action: *action,
                patterns,
            });
        }
        Ok(Policy { rules: out })
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// What happens when no rule matches.
    pub fn default_allows(&self) -> bool {
        !self.rules.iter().any(|r| r.action == Action::Allow)
    }

    /// The first rule matching `host` decides; a host that connects to a
    /// loopback address under another name (`0.0.0.0`, `::`) matches a
    /// rule on that loopback address as well.
    pub fn evaluate(&self, host: &Host) -> Verdict {
        let alias = host.loopback_alias();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.patterns.matches(host)
                || alias.as_ref().is_some_and(|a| rule.patterns.matches(a))
            {
                return Verdict {
                    allowed: rule.action == Action::Allow,
                    rule: Some(i + 1),
                };
            }
        }
        Verdict {
            allowed: self.default_allows(),
            rule: None,
        }
    }

    /// Why `verdict` came out as it did, e.g. `rule 2 (--deny example.com)`.
    pub fn explain(&self, verdict: &Verdict) -> String {
        match verdict.rule.and_then(|n| Some((n, self.rules.get(n - 1)?))) {
            Some((n, rule)) => format!("rule {n} ({rule})"),
            None if verdict.allowed => "no rule matched (default allow: no --allow given)".into(),
            None => "no --allow rule matched (default deny: some --allow is given)".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(rules: &[(Action, &str)]) -> Policy {
        let owned: Vec<(Action, String)> = rules.iter().map(|(a, t)| (*a, t.to_string())).collect();
        Policy::new(&owned).unwrap()
    }

    fn eval(p: &Policy, h: &str) -> (bool, Option<usize>) {
        let v = p.evaluate(&Host::parse(h).unwrap());
        (v.allowed, v.rule)
    }

    use Action::{Allow, Deny};

    #[test]
    fn no_rules_allows_everything() {
        let p = policy(&[]);
        assert_eq!(eval(&p, "example.com"), (true, None));
        assert!(p
            .explain(&p.evaluate(&Host::parse("x").unwrap()))
            .contains("default allow"));
    }

    #[test]
    fn deny_only_default_allows() {
        let p = policy(&[(Deny, "example.com"), (Deny, "10.0.0.0/8")]);
        assert_eq!(eval(&p, "www.example.com"), (false, Some(1)));
        assert_eq!(eval(&p, "10.1.1.1"), (false, Some(2)));
        assert_eq!(eval(&p, "example.org"), (true, None));
        let v = p.evaluate(&Host::parse("example.com").unwrap());
        assert_eq!(p.explain(&v), "rule 1 (--deny example.com)");
    }

    #[test]
    fn any_allow_makes_default_deny() {
        let p = policy(&[(Allow, "example.com")]);
        assert_eq!(eval(&p, "api.example.com"), (true, Some(1)));
        assert_eq!(eval(&p, "example.org"), (false, None));
        let v = p.evaluate(&Host::parse("example.org").unwrap());
        assert!(p.explain(&v).contains("default deny"), "{}", p.explain(&v));
    }

    #[test]
    fn first_match_wins_in_order() {
        let p = policy(&[
            (Deny, "secret.example.com"),
            (Allow, "example.com"),
            (Deny, "*"),
        ]);
        assert_eq!(eval(&p, "secret.example.com"), (false, Some(1)));
        assert_eq!(eval(&p, "a.secret.example.com"), (false, Some(1)));
        assert_eq!(eval(&p, "www.example.com"), (true, Some(2)));
        assert_eq!(eval(&p, "example.org"), (false, Some(3)));
        let p = policy(&[(Allow, "example.com"), (Deny, "secret.example.com")]);
        assert_eq!(eval(&p, "secret.example.com"), (true, Some(1)));
    }

    #[test]
    fn lists_and_addresses() {
        let p = policy(&[(Deny, "127.0.0.0/8, ::1, localhost"), (Allow, "*")]);
        for h in [
            "127.0.0.1",
            "127.1",
            "[::1]",
            "[::ffff:127.0.0.2]",
            "localhost",
            "2130706433",
        ] {
            assert_eq!(eval(&p, h), (false, Some(1)), "{h}");
        }
        assert_eq!(eval(&p, "example.com"), (true, Some(2)));
    }

    #[test]
    fn unspecified_addresses_match_as_loopback() {
        let p = policy(&[(Deny, "127.0.0.0/8,::1"), (Allow, "*")]);
        for h in [
            "0.0.0.0",
            "0",
            "0x0",
            "0.1.2.3",
            "[::]",
            "[::ffff:0.0.0.0]",
            "[0:0:0:0:0:0:0:0]",
        ] {
            assert_eq!(eval(&p, h), (false, Some(1)), "{h}");
        }
        // Only the family's own loopback: a rule on ::1 alone still covers
        // ::, one on 127.0.0.0/8 alone covers 0.0.0.0 but not ::.
        let v6 = policy(&[(Deny, "::1")]);
        assert_eq!(eval(&v6, "[::]"), (false, Some(1)));
        assert_eq!(eval(&v6, "0.0.0.0"), (true, None));
        // The address itself still matches its own rules first.
        let p = policy(&[(Allow, "0.0.0.0/8"), (Deny, "127.0.0.0/8")]);
        assert_eq!(eval(&p, "0.0.0.0"), (true, Some(1)));
        // Other addresses are not affected.
        let p = policy(&[(Deny, "127.0.0.0/8")]);
        assert_eq!(eval(&p, "1.0.0.0"), (true, None));
        assert_eq!(eval(&p, "[::2]"), (true, None));
    }

    #[test]
    fn rules_that_cannot_match_are_errors() {
        let err = |a: Action, t: &str| Policy::new(&[(a, t.to_owned())]).unwrap_err();
        assert!(matches!(err(Deny, ""), PolicyError::Empty { index: 1, .. }));
        assert!(matches!(err(Deny, " , "), PolicyError::Empty { .. }));
        assert!(matches!(
            err(Deny, "example.com:443"),
            PolicyError::Inert { .. }
        ));
        assert!(matches!(
            err(Allow, "*.example.com"),
            PolicyError::Inert { .. }
        ));
        assert!(matches!(err(Deny, "a.com b.com"), PolicyError::Tail { .. }));
        let e = err(Deny, "[::1]");
        assert!(
            e.to_string().starts_with("rule 1 (--deny \"[::1]\")"),
            "{e}"
        );
    }
}
