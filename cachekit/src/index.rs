//! The invalidation index: where the built-in stores file each key, and which patterns they can
//! answer from it instead of walking every key.
//!
//! A physical key `{head}:{rest}` (`head` is the service's prefix) belongs to the
//! *namespace* that is the first `:`-separated part of `rest`: `cachekit:users:7` to `users`.
//! A key with no second `:` (`cachekit:config`) belongs to no namespace and is filed apart, so
//! a namespace's set holds exactly the keys `{head}:{ns}:*` matches. Keys whose head is empty or
//! contains `#` are never indexed: `#` marks the index's own keys
//! (`docs/design/0004-invalidation-index.md` has the layout and the reasons).
//!
//! Everything here works on physical keys and patterns alone, so a key and every pattern that
//! can match it agree on where it is filed, whatever the prefix.

/// Where an indexable physical key is filed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Place<'a> {
    /// The part before the first `:`: the service's prefix.
    pub(crate) head: &'a str,
    /// The namespace; `None` for a key with no second `:`.
    pub(crate) ns: Option<&'a str>,
    /// The key after `{head}:`, which is what the index stores.
    pub(crate) member: &'a str,
}

/// Where `key` is filed, or `None` if it is not indexable.
pub(crate) fn place(key: &str) -> Option<Place<'_>> {
    let (head, member) = key.split_once(':')?;
    if head.is_empty() || head.contains('#') {
        return None;
    }
    let ns = member.split_once(':').map(|(ns, _)| ns);
    Some(Place { head, ns, member })
}

impl Place<'_> {
    /// The index's key: `{head}#ix:{ns}`, or `{head}#ix` for keys in no namespace.
    pub(crate) fn index_key(&self) -> String {
        index_key(self.head, self.ns)
    }
}

/// The index of namespace `ns` under `head`.
pub(crate) fn index_key(head: &str, ns: Option<&str>) -> String {
    match ns {
        Some(ns) => format!("{head}#ix:{ns}"),
        None => format!("{head}#ix"),
    }
}

/// What a physical pattern asks of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Scope<'a> {
    /// No glob at all: exactly this key.
    Exact(String),
    /// `{head}:{ns}:*`: every key of one namespace.
    Namespace { head: &'a str, ns: String },
    /// A pattern whose matches all lie in one namespace, filtered further: `member_pattern` is
    /// the pattern without `{head}:`, to match against index members.
    Within {
        head: &'a str,
        ns: String,
        member_pattern: &'a str,
    },
    /// `{head}:*`: every key under the head.
    Everything { head: &'a str },
    /// Anything else: only a walk of the keys finds the matches.
    Walk,
}

/// Which part of the index answers `pattern`.
pub(crate) fn scope(pattern: &str) -> Scope<'_> {
    // The literal head of the pattern, unescaped, and the byte offsets in `pattern` just past
    // its first and second literal `:`.
    let mut literal = String::new();
    let mut colons: Vec<usize> = Vec::with_capacity(2);
    let mut glob_at = None;
    let mut chars = pattern.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((j, escaped)) => {
                    literal.push(escaped);
                    if escaped == ':' && colons.len() < 2 {
                        colons.push(j + 1);
                    }
                }
                // A trailing backslash: Redis matches it literally.
                None => literal.push('\\'),
            },
            '*' | '?' | '[' => {
                glob_at = Some(i);
                break;
            }
            _ => {
                literal.push(c);
                if c == ':' && colons.len() < 2 {
                    colons.push(i + 1);
                }
            }
        }
    }
    let Some(glob_at) = glob_at else {
        return Scope::Exact(literal);
    };
    let Some(&first) = colons.first() else {
        return Scope::Walk;
    };
    let head = &pattern[..first - 1];
    // The head must read the same raw as unescaped: a key's head is split at its first `:`.
    let Some((literal_head, literal_rest)) = literal.split_once(':') else {
        return Scope::Walk;
    };
    if literal_head.is_empty() || literal_head.contains('#') || head != literal_head {
        return Scope::Walk;
    }
    let member_pattern = &pattern[first..];
    match colons.get(1) {
        Some(&second) => {
            let ns = literal_rest
                .split_once(':')
                .map(|(ns, _)| ns.to_owned())
                .unwrap_or_default();
            if glob_at == second && &pattern[second..] == "*" {
                Scope::Namespace { head, ns }
            } else {
                Scope::Within {
                    head,
                    ns,
                    member_pattern,
                }
            }
        }
        None if member_pattern == "*" => Scope::Everything { head },
        None => Scope::Walk,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::glob_match;

    #[test]
    fn keys_are_filed_by_their_first_part_after_the_prefix() {
        let p = place("cachekit:users:7").unwrap();
        assert_eq!(
            (p.head, p.ns, p.member),
            ("cachekit", Some("users"), "users:7")
        );
        assert_eq!(p.index_key(), "cachekit#ix:users");
        let p = place("cachekit:config").unwrap();
        assert_eq!((p.ns, p.member), (None, "config"));
        assert_eq!(p.index_key(), "cachekit#ix");
        let p = place("cachekit::x").unwrap();
        assert_eq!(p.index_key(), "cachekit#ix:");
        assert_eq!(place("nocolon"), None);
        assert_eq!(place(":users:1"), None);
        assert_eq!(place("a#b:users:1"), None);
    }

    #[test]
    fn patterns_are_answered_by_the_narrowest_part_of_the_index() {
        let ns = |head, ns: &str| Scope::Namespace {
            head,
            ns: ns.into(),
        };
        assert_eq!(scope("cachekit:users:*"), ns("cachekit", "users"));
        assert_eq!(scope("cachekit:*"), Scope::Everything { head: "cachekit" });
        assert_eq!(
            scope("cachekit:users:1*"),
            Scope::Within {
                head: "cachekit",
                ns: "users".into(),
                member_pattern: "users:1*"
            }
        );
        assert_eq!(
            scope("cachekit:users:*:roles"),
            Scope::Within {
                head: "cachekit",
                ns: "users".into(),
                member_pattern: "users:*:roles"
            }
        );
        assert_eq!(
            scope("cachekit:users:7"),
            Scope::Exact("cachekit:users:7".into())
        );
        assert_eq!(
            scope("cachekit:users:\\*"),
            Scope::Exact("cachekit:users:*".into())
        );
        assert_eq!(scope("cachekit:u*"), Scope::Walk);
        assert_eq!(scope("cachekit:*:7"), Scope::Walk);
        assert_eq!(scope("cache*"), Scope::Walk);
        assert_eq!(scope("a#b:users:*"), Scope::Walk);
        // An escaped glob in the prefix is part of the literal head, and so not indexable as
        // written raw: it goes to the walk, which is always correct.
        assert_eq!(scope("my\\*app:users:*"), Scope::Walk);
        // An escaped `:` in the head is left to the walk too.
        assert_eq!(scope("cachekit\\:users:*"), Scope::Walk);
    }

    /// Every key a pattern matches is filed where the pattern's scope looks: the property the
    /// index's correctness rests on, checked over generated keys and patterns.
    #[test]
    fn a_pattern_only_matches_keys_filed_where_it_looks() {
        let parts = [
            "", "a", "b", "ab", "*", "?", "[a]", "\\*", ":", "#", "\\", "a:b",
        ];
        let mut keys = Vec::new();
        for x in ["c", "a", "c#"] {
            for y in parts {
                for z in parts {
                    keys.push(format!("{x}:{y}:{z}"));
                    keys.push(format!("{x}:{y}{z}"));
                }
            }
        }
        let mut patterns = Vec::new();
        for x in ["c", "a", "c\\#", "?"] {
            for y in parts {
                for z in parts {
                    patterns.push(format!("{x}:{y}:{z}"));
                    patterns.push(format!("{x}:{y}{z}"));
                }
            }
        }
        let mut checked = 0;
        for pattern in &patterns {
            let scope = scope(pattern);
            for key in &keys {
                if !glob_match(pattern, key) {
                    continue;
                }
                checked += 1;
                let filed = place(key);
                match &scope {
                    Scope::Exact(exact) => assert_eq!(exact, key, "{pattern}"),
                    Scope::Namespace { head, ns } | Scope::Within { head, ns, .. } => {
                        let filed = filed.unwrap_or_else(|| panic!("{key} for {pattern}"));
                        assert_eq!(filed.head, *head, "{key} for {pattern}");
                        assert_eq!(filed.ns, Some(ns.as_str()), "{key} for {pattern}");
                        if let Scope::Within { member_pattern, .. } = &scope {
                            assert!(glob_match(member_pattern, filed.member), "{key} {pattern}");
                        }
                    }
                    Scope::Everything { head } => {
                        assert_eq!(filed.map(|f| f.head), Some(*head), "{key} for {pattern}");
                    }
                    Scope::Walk => {}
                }
            }
            // A whole namespace is removed without matching: every key filed there must match.
            if let Scope::Namespace { head, ns } = &scope {
                for key in &keys {
                    if place(key).is_some_and(|f| f.head == *head && f.ns == Some(ns.as_str())) {
                        assert!(glob_match(pattern, key), "{key} filed under {pattern}");
                    }
                }
            }
        }
        assert!(
            checked > 1000,
            "too few matches to mean anything: {checked}"
        );
    }
}
