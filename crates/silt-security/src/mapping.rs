//! Principal mapping rules for client certificates, in the format of Kafka's
//! `ssl.principal.mapping.rules`: each rule is `RULE:pattern/replacement/` (optionally followed by
//! `L` or `U` to lower- or upper-case the result) or `DEFAULT` (the whole DN). The first rule
//! whose pattern matches the whole RFC 2253 distinguished name gives the principal's name; when
//! none matches, the certificate names no principal and the connection is refused, as in Kafka.
//!
//! Example: `RULE:^CN=([^,]+),OU=ServiceUsers,.*$/$1/L` maps `CN=Orders,OU=ServiceUsers,O=Example`
//! to `User:orders`.

use regex::Regex;

/// How one rule changes the case of its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Keep,
    Lower,
    Upper,
}

#[derive(Debug, Clone)]
enum Rule {
    Default,
    Replace {
        pattern: Regex,
        replacement: String,
        case: Case,
    },
}

/// An ordered list of mapping rules.
#[derive(Debug, Clone)]
pub struct PrincipalRules {
    rules: Vec<Rule>,
    source: Vec<String>,
}

impl PartialEq for PrincipalRules {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// Splits `RULE:` bodies at unescaped slashes: `pattern/replacement/flags`.
fn split_rule(body: &str) -> Option<(String, String, &str)> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some((_, '/')) => cur.push('/'),
                Some((_, other)) => {
                    cur.push('\\');
                    cur.push(other);
                }
                None => cur.push('\\'),
            },
            '/' => {
                parts.push(std::mem::take(&mut cur));
                if parts.len() == 2 {
                    return Some((parts.remove(0), parts.remove(0), &body[i + 1..]));
                }
            }
            c => cur.push(c),
        }
    }
    None
}

impl PrincipalRules {
    /// Parses the rules; a rule that does not parse is an error that names it.
    pub fn parse(rules: &[String]) -> Result<Self, String> {
        let group_ref = Regex::new(r"\$(\d+)").expect("static regex");
        let mut out = Vec::new();
        for r in rules {
            let r = r.trim();
            if r == "DEFAULT" {
                out.push(Rule::Default);
                continue;
            }
            let bad = |why: &str| {
                format!(
                    "principal mapping rule {r:?}: {why} (expected RULE:pattern/replacement/ with an optional L or U, or DEFAULT)"
                )
            };
            let body = r.strip_prefix("RULE:").ok_or_else(|| bad("unknown rule"))?;
            let (pattern, replacement, flags) =
                split_rule(body).ok_or_else(|| bad("missing '/'"))?;
            let case = match flags {
                "" => Case::Keep,
                "L" => Case::Lower,
                "U" => Case::Upper,
                _ => return Err(bad("only L or U may follow the last '/'")),
            };
            // Kafka matches the whole name (Matcher.matches).
            let pattern = Regex::new(&format!("^(?:{pattern})$"))
                .map_err(|e| bad(&format!("bad pattern: {e}")))?;
            // Java's `$1` is `${1}` here (so `$1x` stays group 1 followed by `x`).
            let replacement = group_ref.replace_all(&replacement, "$${$1}").into_owned();
            out.push(Rule::Replace {
                pattern,
                replacement,
                case,
            });
        }
        if out.is_empty() {
            return Err("principal mapping rules: none given".into());
        }
        Ok(Self {
            rules: out,
            source: rules.to_vec(),
        })
    }

    /// The principal name for a distinguished name, or `None` when no rule applies (or the
    /// result is empty).
    pub fn apply(&self, dn: &str) -> Option<String> {
        for rule in &self.rules {
            match rule {
                Rule::Default => return Some(dn.to_string()).filter(|s| !s.is_empty()),
                Rule::Replace {
                    pattern,
                    replacement,
                    case,
                } => {
                    let Some(caps) = pattern.captures(dn) else {
                        continue;
                    };
                    let mut name = String::new();
                    caps.expand(replacement, &mut name);
                    let name = match case {
                        Case::Keep => name,
                        Case::Lower => name.to_lowercase(),
                        Case::Upper => name.to_uppercase(),
                    };
                    return Some(name).filter(|s| !s.is_empty());
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(r: &[&str]) -> PrincipalRules {
        PrincipalRules::parse(&r.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn the_first_matching_rule_names_the_principal() {
        let r = rules(&[
            "RULE:^CN=([^,]+),OU=ServiceUsers,.*$/$1/L",
            r"RULE:^CN=([^,]+),OU=(People|Staff),O=(.*)$/$1@$3/",
            "DEFAULT",
        ]);
        assert_eq!(
            r.apply("CN=Orders,OU=ServiceUsers,O=Example").as_deref(),
            Some("orders")
        );
        assert_eq!(
            r.apply("CN=alice,OU=Staff,O=Example").as_deref(),
            Some("alice@Example")
        );
        assert_eq!(
            r.apply("CN=bob,O=Elsewhere").as_deref(),
            Some("CN=bob,O=Elsewhere"),
            "DEFAULT: the whole DN"
        );
    }

    #[test]
    fn no_matching_rule_means_no_principal_and_patterns_match_whole_names() {
        let r = rules(&["RULE:CN=([^,]+)/$1/U"]);
        assert_eq!(r.apply("CN=carol").as_deref(), Some("CAROL"));
        assert_eq!(
            r.apply("CN=carol,O=Example"),
            None,
            "the whole name must match"
        );
        assert_eq!(
            rules(&["RULE:CN=(.*)/$1/"]).apply("CN="),
            None,
            "empty result"
        );
    }

    #[test]
    fn escaped_slashes_and_bad_rules() {
        let r = rules(&[r"RULE:^CN=([^,]+),OU=a\/b$/$1x/"]);
        assert_eq!(r.apply("CN=dave,OU=a/b").as_deref(), Some("davex"));
        for bad in ["RULE:nope", "RULE:(/x/", "RULE:a/b/Q", "KERBEROS", ""] {
            assert!(
                PrincipalRules::parse(&[bad.to_string()]).is_err(),
                "{bad:?} should be refused"
            );
        }
        assert!(PrincipalRules::parse(&[]).is_err());
    }
}
