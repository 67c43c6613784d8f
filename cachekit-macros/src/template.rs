//! Key templates and invalidation patterns: `"users:{id}"` split into literal text and
//! placeholders.
//!
//! The syntax is `format!`'s, reduced to names: `{name}` is a placeholder, `{{` and `}}` are
//! literal braces (Redis Cluster hash tags are written `"{{users}}:{id}"`). Whether each name is
//! a parameter of the function is checked in `valid.rs`.

use syn::LitStr;

/// A parsed template, with the literal it came from (errors point at it).
pub(crate) struct Template {
    pub(crate) lit: LitStr,
    pub(crate) parts: Vec<Part>,
}

/// A piece of a template.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Part {
    /// Text used as written, braces unescaped.
    Literal(String),
    /// The text between `{` and `}`, not yet known to name a parameter.
    Placeholder(String),
}

impl Template {
    pub(crate) fn parse(lit: &LitStr) -> syn::Result<Self> {
        let parts =
            parse_parts(&lit.value()).map_err(|message| syn::Error::new(lit.span(), message))?;
        Ok(Template {
            lit: lit.clone(),
            parts,
        })
    }

    /// The placeholder names, in order, repeats included.
    pub(crate) fn placeholders(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Placeholder(name) => Some(name.as_str()),
            Part::Literal(_) => None,
        })
    }
}

fn parse_parts(text: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut name = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some('{') | None => {
                            return Err(format!(
                                "unclosed placeholder `{{{name}`: write `{{name}}` for a \
                                 parameter, or `{{{{` for a literal brace"
                            ));
                        }
                        Some(c) => name.push(c),
                    }
                }
                if name.is_empty() {
                    return Err(
                        "empty placeholder `{}`: name a parameter, as in `{id}`, or \
                                write `{{}}` for literal braces"
                            .to_owned(),
                    );
                }
                if !literal.is_empty() {
                    parts.push(Part::Literal(std::mem::take(&mut literal)));
                }
                parts.push(Part::Placeholder(name));
            }
            '}' => {
                return Err("unmatched `}`: write `}}` for a literal brace".to_owned());
            }
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// Whether `name` can be a Rust parameter name (raw identifiers excluded: write `{type}` for a
/// parameter `r#type`).
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_alphabetic())
        && chars.all(|c| c == '_' || c.is_alphanumeric())
        && name != "_"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(s: &str) -> Part {
        Part::Literal(s.to_owned())
    }

    fn arg(s: &str) -> Part {
        Part::Placeholder(s.to_owned())
    }

    #[test]
    fn splits_literals_and_placeholders() {
        assert_eq!(
            parse_parts("users:{id}"),
            Ok(vec![lit("users:"), arg("id")])
        );
        assert_eq!(
            parse_parts("{org}:users:{id}:x"),
            Ok(vec![arg("org"), lit(":users:"), arg("id"), lit(":x")])
        );
        assert_eq!(parse_parts("users:list"), Ok(vec![lit("users:list")]));
        assert_eq!(parse_parts(""), Ok(vec![]));
        assert_eq!(parse_parts("{a}{b}"), Ok(vec![arg("a"), arg("b")]));
    }

    #[test]
    fn doubled_braces_are_literal() {
        assert_eq!(
            parse_parts("{{users}}:{id}"),
            Ok(vec![lit("{users}:"), arg("id")])
        );
    }

    #[test]
    fn placeholder_text_is_kept_for_validation() {
        assert_eq!(parse_parts("{self.id}"), Ok(vec![arg("self.id")]));
        assert_eq!(parse_parts("{id:?}"), Ok(vec![arg("id:?")]));
    }

    #[test]
    fn malformed_braces_are_errors() {
        for bad in ["users:{id", "users:{", "users:}", "{}", "a{b{c}}"] {
            assert!(parse_parts(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn identifiers() {
        for good in ["id", "_id", "user_id2", "é"] {
            assert!(is_identifier(good), "{good}");
        }
        for bad in ["", "_", "2id", "self.id", "id:?", "a b", "r#type"] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }
}
