//! Key patterns: which keys a rule applies to, in Redis's glob syntax (`cache:*`,
//! `bull:*:completed`, `user:[0-9]*`).
//!
//! Most patterns in practice are a prefix (`cache:*`) or an exact key; those compile to a
//! byte comparison, so matching them costs no more than `starts_with`. Anything else goes
//! to `globset`, whose `*` also crosses `:` and `/` as Redis's does.

use std::os::unix::ffi::OsStrExt;

/// A compiled key pattern.
#[derive(Debug, Clone)]
pub struct KeyPattern {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    Any,
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Glob(globset::GlobMatcher),
}

impl KeyPattern {
    /// Compile a pattern; an invalid glob is an error naming the pattern.
    pub fn new(pattern: &str) -> Result<Self, String> {
        let meta = |c: char| matches!(c, '*' | '?' | '[' | ']' | '\\' | '{' | '}');
        let kind = if pattern == "*" {
            Kind::Any
        } else if !pattern.contains(meta) {
            Kind::Exact(pattern.as_bytes().into())
        } else if let Some(prefix) = pattern.strip_suffix('*').filter(|p| !p.contains(meta)) {
            Kind::Prefix(prefix.as_bytes().into())
        } else {
            let glob = globset::GlobBuilder::new(pattern)
                .literal_separator(false)
                .backslash_escape(true)
                .build()
                .map_err(|e| format!("pattern `{pattern}`: {e}"))?;
            Kind::Glob(glob.compile_matcher())
        };
        Ok(KeyPattern {
            source: pattern.to_string(),
            kind,
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when `key` matches.
    #[inline]
    pub fn matches(&self, key: &[u8]) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact(k) => key == &k[..],
            Kind::Prefix(p) => key.starts_with(p),
            Kind::Glob(g) => g.is_match(std::path::Path::new(std::ffi::OsStr::from_bytes(key))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_exact_and_glob() {
        let p = KeyPattern::new("cache:*").unwrap();
        assert!(matches!(p.kind, Kind::Prefix(_)));
        assert!(p.matches(b"cache:a/b:c") && !p.matches(b"cach"));
        let e = KeyPattern::new("config").unwrap();
        assert!(e.matches(b"config") && !e.matches(b"config2"));
        let g = KeyPattern::new("bull:*:completed").unwrap();
        assert!(g.matches(b"bull:email:completed") && g.matches(b"bull:a:b:completed"));
        assert!(!g.matches(b"bull:email:wait"));
        let c = KeyPattern::new("user:[0-9]*").unwrap();
        assert!(c.matches(b"user:7x") && !c.matches(b"user:x"));
        assert!(KeyPattern::new("*").unwrap().matches(b""));
        assert!(KeyPattern::new("a[").is_err());
    }
}
