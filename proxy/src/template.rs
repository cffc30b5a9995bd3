//! `google.api.http` path templates: parsing, and matching a request path into variable
//! bindings.
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! FieldPath = IDENT { "." IDENT } ;
//! Verb     = ":" LITERAL ;
//! ```

use std::fmt;
use std::sync::Arc;

/// One piece of a parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// A segment that must be exactly this text.
    Literal(String),
    /// `*`: any one segment.
    One,
    /// `**`: every remaining segment (only last).
    Rest,
    /// The start of a variable capturing the pieces up to its `End`.
    Start(String),
    End,
}

/// A parsed path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    verb: Option<String>,
    /// The template as written: the route's name in logs and metric labels, shared so that
    /// naming a request's route allocates nothing.
    source: Arc<str>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("path template `{template}`: {reason}")]
pub struct TemplateError {
    template: String,
    reason: String,
}

/// A variable's field path and the (percent-decoded) text it captured.
pub type Bindings = Vec<(String, String)>;

impl Template {
    /// The template as written (`/v1/products/{id}`).
    pub fn text(&self) -> &Arc<str> {
        &self.source
    }

    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let fail = |reason: &str| TemplateError {
            template: source.to_owned(),
            reason: reason.to_owned(),
        };
        let rest = source
            .strip_prefix('/')
            .ok_or_else(|| fail("must start with `/`"))?;
        // The verb follows the last `:` outside braces.
        let (path, verb) = split_verb(rest);
        if verb.is_some_and(str::is_empty) {
            return Err(fail("empty verb"));
        }
        let mut pieces = Vec::new();
        let mut in_variable = false;
        for raw in split_segments(path).ok_or_else(|| fail("unbalanced braces"))? {
            let mut segment = raw.as_str();
            if let Some(open) = segment.strip_prefix('{') {
                if in_variable {
                    return Err(fail("nested variable"));
                }
                let (name, pattern) = match open.split_once('=') {
                    Some((name, pattern)) => (name, Some(pattern)),
                    None => (open.trim_end_matches('}'), None),
                };
                if !valid_field_path(name) {
                    return Err(fail("bad variable name"));
                }
                pieces.push(Piece::Start(name.to_owned()));
                match pattern {
                    None => {
                        if !open.ends_with('}') {
                            return Err(fail("a variable without `=` spans one segment"));
                        }
                        pieces.push(Piece::One);
                        pieces.push(Piece::End);
                        continue;
                    }
                    Some(pattern) => {
                        in_variable = true;
                        segment = pattern;
                    }
                }
            }
            let closes = in_variable && segment.ends_with('}');
            let body = if closes {
                &segment[..segment.len() - 1]
            } else {
                segment
            };
            pieces.push(match body {
                "" => return Err(fail("empty segment")),
                "*" => Piece::One,
                "**" => Piece::Rest,
                literal if literal.contains(['{', '}', '*']) => {
                    return Err(fail("bad literal segment"));
                }
                literal => Piece::Literal(literal.to_owned()),
            });
            if closes {
                pieces.push(Piece::End);
                in_variable = false;
            }
        }
        if in_variable {
            return Err(fail("unclosed variable"));
        }
        let rest_at = pieces.iter().position(|p| *p == Piece::Rest);
        if let Some(at) = rest_at
            && pieces[at + 1..].iter().any(|p| *p != Piece::End)
        {
            return Err(fail("`**` must be the last segment"));
        }
        Ok(Self {
            pieces,
            verb: verb.map(str::to_owned),
            source: source.into(),
        })
    }

    /// Matches `path` (the URL path, still percent-encoded, without query), returning the
    /// variable bindings.
    pub fn matches(&self, path: &str) -> Option<Bindings> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let segments: Vec<&str> = if rest.is_empty() {
            Vec::new()
        } else {
            rest.split('/').collect()
        };
        let mut bindings = Vec::new();
        let mut open: Option<(&str, usize)> = None;
        let mut at = 0;
        for piece in &self.pieces {
            match piece {
                Piece::Literal(literal) => {
                    if segments.get(at).copied() != Some(literal.as_str()) {
                        return None;
                    }
                    at += 1;
                }
                Piece::One => {
                    if segments.get(at).is_none_or(|s| s.is_empty()) {
                        return None;
                    }
                    at += 1;
                }
                Piece::Rest => {
                    if at >= segments.len() {
                        return None;
                    }
                    at = segments.len();
                }
                Piece::Start(name) => open = Some((name, at)),
                Piece::End => {
                    let (name, from) = open.take()?;
                    let captured = segments[from..at]
                        .iter()
                        .map(|segment| percent_decode(segment, from + 1 < at))
                        .collect::<Option<Vec<_>>>()?
                        .join("/");
                    bindings.push((name.to_owned(), captured));
                }
            }
        }
        (at == segments.len()).then_some(bindings)
    }

    /// How specific the template is: literal segments outrank variables, so
    /// `/v1/users/me` is tried before `/v1/users/{id}`.
    pub fn specificity(&self) -> (usize, usize, bool) {
        let literals = self
            .pieces
            .iter()
            .filter(|p| matches!(p, Piece::Literal(_)))
            .count();
        let segments = self
            .pieces
            .iter()
            .filter(|p| matches!(p, Piece::Literal(_) | Piece::One | Piece::Rest))
            .count();
        (literals, segments, self.verb.is_some())
    }

    /// The field paths of the template's variables.
    pub fn variables(&self) -> impl Iterator<Item = &str> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Start(name) => Some(name.as_str()),
            _ => None,
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// Splits off the verb: the text after the last `:` that is not inside braces.
fn split_verb(path: &str) -> (&str, Option<&str>) {
    let mut depth = 0usize;
    let mut colon = None;
    for (index, c) in path.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            ':' if depth == 0 => colon = Some(index),
            _ => {}
        }
    }
    match colon {
        Some(index) => (&path[..index], Some(&path[index + 1..])),
        None => (path, None),
    }
}

/// Splits at `/`, keeping a variable's `{name=a/b}` apart only at its own slashes: returns the
/// raw segments, or `None` for unbalanced braces.
fn split_segments(path: &str) -> Option<Vec<String>> {
    let mut depth = 0i32;
    for c in path.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return None;
        }
    }
    (depth == 0).then(|| path.split('/').map(str::to_owned).collect())
}

fn valid_field_path(path: &str) -> bool {
    !path.is_empty()
        && path.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        })
}

/// Decodes `%XX` escapes. A multi-segment capture keeps `%2F` encoded, as the HTTP rule
/// specification asks; a single segment decodes it.
pub fn percent_decode(text: &str, keep_slash: bool) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            let byte = u8::from_str_radix(hex, 16).ok()?;
            if keep_slash && byte == b'/' {
                out.extend_from_slice(&bytes[index..index + 3]);
            } else {
                out.push(byte);
            }
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bind(template: &str, path: &str) -> Option<Bindings> {
        Template::parse(template).unwrap().matches(path)
    }

    fn pairs(list: &[(&str, &str)]) -> Bindings {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn literals_and_simple_variables() {
        assert_eq!(bind("/v1/users/me", "/v1/users/me"), Some(vec![]));
        assert_eq!(bind("/v1/users/me", "/v1/users/you"), None);
        assert_eq!(bind("/v1/users/me", "/v1/users/me/x"), None);
        assert_eq!(
            bind("/v1/users/{id}/roles", "/v1/users/42/roles"),
            Some(pairs(&[("id", "42")]))
        );
        assert_eq!(bind("/v1/users/{id}/roles", "/v1/users//roles"), None);
        assert_eq!(
            bind("/.well-known/jwks.json", "/.well-known/jwks.json"),
            Some(vec![])
        );
    }

    #[test]
    fn custom_verbs() {
        assert_eq!(
            bind("/v1/products:search", "/v1/products:search"),
            Some(vec![])
        );
        assert_eq!(bind("/v1/products:search", "/v1/products"), None);
        assert_eq!(bind("/v1/products/{id}", "/v1/products:search"), None);
        assert_eq!(
            bind("/v1/orders/{id}:cancel", "/v1/orders/o-1:cancel"),
            Some(pairs(&[("id", "o-1")]))
        );
        assert_eq!(bind("/v1/orders/{id}:cancel", "/v1/orders/o-1:ship"), None);
        assert_eq!(bind("/v1/orders/{id}:cancel", "/v1/orders/o-1"), None);
    }

    #[test]
    fn multi_segment_variables_and_wildcards() {
        assert_eq!(
            bind("/v1/{name=shelves/*/books/*}", "/v1/shelves/s1/books/b%2F2"),
            Some(pairs(&[("name", "shelves/s1/books/b%2F2")]))
        );
        assert_eq!(
            bind("/v1/files/{path=**}", "/v1/files/a/b/c.txt"),
            Some(pairs(&[("path", "a/b/c.txt")]))
        );
        assert_eq!(bind("/v1/files/{path=**}", "/v1/files"), None);
        assert_eq!(bind("/v1/*/items", "/v1/any/items"), Some(vec![]));
        assert_eq!(
            bind("/v1/users/{user.id}", "/v1/users/a%20b"),
            Some(pairs(&[("user.id", "a b")]))
        );
    }

    #[test]
    fn bad_templates_and_bad_escapes() {
        for bad in [
            "v1/users",
            "/v1/{id",
            "/v1/{a{b}}",
            "/v1/**/x",
            "/v1/users:",
            "/v1//x",
            "/v1/{1x}",
        ] {
            assert!(Template::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(bind("/v1/users/{id}", "/v1/users/%zz"), None);
        assert_eq!(bind("/v1/users/{id}", "/v1/users/%ff"), None, "not UTF-8");
    }

    #[test]
    fn literal_templates_outrank_variables() {
        let me = Template::parse("/v1/users/me").unwrap();
        let id = Template::parse("/v1/users/{id}").unwrap();
        assert!(me.specificity() > id.specificity());
        assert_eq!(id.variables().collect::<Vec<_>>(), ["id"]);
    }
}
