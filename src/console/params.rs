//! The query strings of the console's API routes: parsed once, checked against what each route
//! takes, and re-encoded for the upstream, so only parameters the console knows reach it.

use super::error::ConsoleError;

/// Longest query string a route reads (a PromQL query is the longest thing the page sends).
pub const MAX_QUERY_BYTES: usize = 16 * 1024;

/// A route's parameters, in the order given.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parses `raw`, refusing any parameter not in `allowed`.
    pub fn parse(raw: Option<&str>, allowed: &[&str]) -> Result<Self, ConsoleError> {
        let raw = raw.unwrap_or("");
        if raw.len() > MAX_QUERY_BYTES {
            return Err(ConsoleError::BadRequest(format!("query string longer than {MAX_QUERY_BYTES} bytes")));
        }
        let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw)
            .map_err(|error| ConsoleError::BadRequest(format!("invalid query string: {error}")))?;
        if let Some((name, _)) = pairs.iter().find(|(name, _)| !allowed.contains(&name.as_str())) {
            let takes = if allowed.is_empty() { "no parameters".to_string() } else { allowed.join(", ") };
            return Err(ConsoleError::BadRequest(format!("unknown parameter `{name}` (this route takes {takes})")));
        }
        Ok(Self(pairs))
    }

    /// The one value of `name`, if given; given twice is an error.
    pub fn single(&self, name: &str) -> Result<Option<&str>, ConsoleError> {
        let mut values = self.0.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let first = values.next();
        if values.next().is_some() {
            return Err(ConsoleError::BadRequest(format!("parameter `{name}` given more than once")));
        }
        Ok(first)
    }

    /// The one value of `name`, which must be given and not empty.
    pub fn required(&self, name: &str) -> Result<&str, ConsoleError> {
        match self.single(name)? {
            Some(value) if !value.is_empty() => Ok(value),
            _ => Err(ConsoleError::BadRequest(format!("parameter `{name}` is required"))),
        }
    }

    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every parameter but `except`, encoded as a query string.
    pub fn encode_without(&self, except: &str) -> String {
        let kept: Vec<&(String, String)> = self.0.iter().filter(|(n, _)| n != except).collect();
        // Encoding pairs of strings cannot fail.
        serde_urlencoded::to_string(kept).unwrap_or_default()
    }
}

/// Percent-encodes `s` for one path segment: everything but RFC 3986's unreserved characters,
/// `/` included (log-cache reads `%2F` in a source id, §6.7).
pub fn encode_path_segment(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for byte in s.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            // Writing to a String cannot fail.
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_unknown_repeated_and_missing_parameters() {
        let params = Params::parse(Some("a=1&b=2&b=3"), &["a", "b", "c"]).unwrap();
        assert_eq!(params.required("a").unwrap(), "1");
        assert!(params.single("b").is_err());
        assert!(params.required("c").is_err());
        assert_eq!(params.all("b").collect::<Vec<_>>(), ["2", "3"]);
        let error = Params::parse(Some("a=1&zz=2"), &["a"]).unwrap_err();
        assert_eq!(error.to_string(), "unknown parameter `zz` (this route takes a)");
        assert!(Params::parse(Some(&"a".repeat(MAX_QUERY_BYTES + 1)), &["a"]).is_err());
    }

    #[test]
    fn re_encodes_what_it_keeps() {
        let params = Params::parse(
            Some("source_id=x&envelope_types=GAUGE&name_filter=a%26b"),
            &["source_id", "envelope_types", "name_filter"],
        )
        .unwrap();
        assert_eq!(params.encode_without("source_id"), "envelope_types=GAUGE&name_filter=a%26b");
    }

    #[test]
    fn encodes_a_source_id_as_one_path_segment() {
        assert_eq!(encode_path_segment("app-1_x.y~z"), "app-1_x.y~z");
        assert_eq!(encode_path_segment("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }
}
