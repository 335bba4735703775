//! Key patterns: which keys a rule applies to, in Redis's glob syntax (`cache:*`,
//! `bull:*:completed`, `user:[0-9]*`).
//!
//! A rule's pattern matches exactly the keys `KEYS pattern` and `SCAN … MATCH pattern`
//! return: the matcher is Redis 7.0's `stringmatchlen` (util.c), quirks included. `*` crosses
//! every byte (`:` and `/` too); `[^…]` negates a class and `!` is literal; a range may be
//! written backwards (`[z-a]`) and compares bytes as C's signed `char`; `\` escapes the next
//! byte, in and out of classes, and a trailing `\` is literal; an unterminated class (`ab[`,
//! `[a-]x`) runs to the end of the pattern. Every pattern is valid, as in Redis.
//!
//! Most patterns in practice are a prefix (`cache:*`) or an exact key; those compile to a
//! byte comparison, so matching them costs no more than `starts_with`.

/// A compiled key pattern.
#[derive(Debug, Clone)]
pub struct KeyPattern {
    source: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
    /// `*` alone: every key, the empty one too (as `KEYS *` returns it).
    Any,
    Exact(Box<[u8]>),
    /// A non-empty literal then only `*`s.
    Prefix(Box<[u8]>),
    Glob(Box<[u8]>),
    /// Several patterns, any of which matches (a library's keys that one glob cannot name).
    AnyOf(Box<[KeyPattern]>),
}

/// The bytes Redis's matcher treats specially.
pub fn is_meta(b: u8) -> bool {
    matches!(b, b'*' | b'?' | b'[' | b'\\')
}

impl KeyPattern {
    /// Compile a pattern. Every pattern is valid, as for Redis.
    pub fn new(pattern: &str) -> Self {
        let bytes = pattern.as_bytes();
        let literal_end = bytes.iter().position(|&b| is_meta(b));
        let kind = match literal_end {
            _ if bytes == b"*" => Kind::Any,
            None => Kind::Exact(bytes.into()),
            Some(n) if n > 0 && bytes[n..].iter().all(|&b| b == b'*') => {
                Kind::Prefix(bytes[..n].into())
            }
            Some(_) => Kind::Glob(bytes.into()),
        };
        KeyPattern {
            source: pattern.to_string(),
            kind,
        }
    }

    /// Several patterns: a key matches when any of them does. For a library preset whose
    /// keys one Redis glob cannot describe (Sidekiq's `queue:*` lists and `schedule` set);
    /// Redis's own globs have no alternatives.
    pub fn any_of(patterns: &[&str]) -> Self {
        KeyPattern {
            source: patterns.join(" "),
            kind: Kind::AnyOf(patterns.iter().map(|p| KeyPattern::new(p)).collect()),
        }
    }

    /// True when the pattern begins with a wildcard (`*`, `*:tmp`, `?*`, `[a-z]*`): it names
    /// no key by its text, only keys of a shape. `cache:*`, `bull:*` and `schedule` begin
    /// with literal text and so name the keys they match; an escaped first byte (`\*x`)
    /// is literal too.
    pub fn is_catch_all(&self) -> bool {
        matches!(self.source.as_bytes().first(), Some(b'*' | b'?' | b'['))
    }

    /// True when the pattern matches every key (`*` alone).
    pub fn matches_every_key(&self) -> bool {
        matches!(self.kind, Kind::Any)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// True when `key` matches. `*`, exact keys and prefixes are decided inline; a glob or
    /// a list of patterns goes through [`KeyPattern::matches_general`].
    #[inline(always)]
    pub fn matches(&self, key: &[u8]) -> bool {
        match &self.kind {
            Kind::Any => true,
            Kind::Exact(k) => same_key(key, k),
            Kind::Prefix(p) => key.starts_with(p),
            Kind::Glob(_) | Kind::AnyOf(_) => self.matches_general(key),
        }
    }

    /// [`KeyPattern::matches`] for the patterns it does not decide inline.
    #[inline(never)]
    fn matches_general(&self, key: &[u8]) -> bool {
        match &self.kind {
            Kind::Glob(g) => string_match(g, key, &mut false),
            Kind::AnyOf(all) => all.iter().any(|p| p.matches(key)),
            Kind::Any | Kind::Exact(_) | Kind::Prefix(_) => self.matches(key),
        }
    }
}

/// `key == exact`, inline: keys differ in length more often than not, and an exact
/// pattern (or a queue's key) is short, so comparing words here costs less than a call to
/// `memcmp`.
#[inline(always)]
pub fn same_key(key: &[u8], exact: &[u8]) -> bool {
    if key.len() != exact.len() {
        return false;
    }
    let n = key.len();
    if n < 8 {
        if n < 4 {
            return key.iter().zip(exact).all(|(a, b)| a == b);
        }
        // Two overlapping half-words cover four to seven bytes.
        let half =
            |s: &[u8], i: usize| u32::from_ne_bytes(s[i..i + 4].try_into().expect("4 bytes"));
        return half(key, 0) == half(exact, 0) && half(key, n - 4) == half(exact, n - 4);
    }
    let word = |s: &[u8], i: usize| u64::from_ne_bytes(s[i..i + 8].try_into().expect("8 bytes"));
    // Whole words from the start, then the last eight bytes (overlapping the previous word).
    let mut i = 0;
    while i + 8 < n {
        if word(key, i) != word(exact, i) {
            return false;
        }
        i += 8;
    }
    word(key, n - 8) == word(exact, n - 8)
}

/// A byte as C's signed `char`, as Redis's range comparison sees it.
fn signed(b: u8) -> i32 {
    i32::from(b as i8)
}

/// Redis 7.0's `stringmatchlen_impl` (case-sensitive), step for step. `pat[pat.len()]` reads
/// as 0, as the C code reads the string's terminator. `skip_longer` is Redis's early exit:
/// once the rest of a pattern after a `*` matched nowhere in the rest of the key, no earlier
/// `*` can make it match, so the time stays polynomial.
fn string_match(pat: &[u8], key: &[u8], skip_longer: &mut bool) -> bool {
    let at = |i: usize| pat.get(i).copied().unwrap_or(0);
    let (mut p, mut s) = (0, 0);
    while p < pat.len() && s < key.len() {
        match pat[p] {
            b'*' => {
                while p + 1 < pat.len() && pat[p + 1] == b'*' {
                    p += 1;
                }
                if p + 1 == pat.len() {
                    return true;
                }
                while s < key.len() {
                    if string_match(&pat[p + 1..], &key[s..], skip_longer) {
                        return true;
                    }
                    if *skip_longer {
                        return false;
                    }
                    s += 1;
                }
                *skip_longer = true;
                return false;
            }
            b'?' => s += 1,
            b'[' => {
                let (end, matched) = class_match(pat, p + 1, key[s]);
                if !matched {
                    return false;
                }
                p = end;
                s += 1;
            }
            b'\\' => {
                if pat.len() - p >= 2 {
                    p += 1;
                }
                if pat[p] != key[s] {
                    return false;
                }
                s += 1;
            }
            c => {
                if c != key[s] {
                    return false;
                }
                s += 1;
            }
        }
        p += 1;
        if s == key.len() {
            while at(p) == b'*' {
                p += 1;
            }
            break;
        }
    }
    p == pat.len() && s == key.len()
}

/// A class starting at `pat[p]` (just after `[`) against byte `c`: the index of its closing
/// `]` (or of its last byte when unterminated) and whether `c` is in it.
fn class_match(pat: &[u8], mut p: usize, c: u8) -> (usize, bool) {
    let at = |i: usize| pat.get(i).copied().unwrap_or(0);
    let not = at(p) == b'^';
    if not {
        p += 1;
    }
    let mut matched = false;
    loop {
        let left = pat.len() - p;
        if at(p) == b'\\' && left >= 2 {
            p += 1;
            matched |= pat[p] == c;
        } else if at(p) == b']' {
            break;
        } else if left == 0 {
            p -= 1;
            break;
        } else if left >= 3 && pat[p + 1] == b'-' {
            let (a, b) = (signed(pat[p]), signed(pat[p + 2]));
            let (lo, hi) = if a > b { (b, a) } else { (a, b) };
            matched |= (lo..=hi).contains(&signed(c));
            p += 2;
        } else {
            matched |= pat[p] == c;
        }
        p += 1;
    }
    (p, matched != not)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, key: &[u8]) -> bool {
        KeyPattern::new(pattern).matches(key)
    }

    #[test]
    fn prefix_exact_and_glob() {
        let p = KeyPattern::new("cache:*");
        assert!(matches!(p.kind, Kind::Prefix(_)));
        assert!(p.matches(b"cache:a/b:c") && !p.matches(b"cach"));
        let e = KeyPattern::new("config");
        assert!(matches!(e.kind, Kind::Exact(_)));
        assert!(e.matches(b"config") && !e.matches(b"config2"));
        let g = KeyPattern::new("bull:*:completed");
        assert!(g.matches(b"bull:email:completed") && g.matches(b"bull:a:b:completed"));
        assert!(!g.matches(b"bull:email:wait"));
        assert!(m("user:[0-9]*", b"user:7x") && !m("user:[0-9]*", b"user:x"));
        assert!(m("*", b""));
        // Braces are not special to Redis.
        assert!(m("{a,b}", b"{a,b}") && !m("{a,b}", b"a"));
    }

    #[test]
    fn exact_keys_of_every_length_compare_whole() {
        for n in 0..40 {
            let key: Vec<u8> = (0..n as u8).collect();
            let p = KeyPattern::new(std::str::from_utf8(&key).expect("ascii"));
            assert!(p.matches(&key), "{n}");
            for i in 0..n {
                let mut other = key.clone();
                other[i] ^= 0x40;
                assert!(!p.matches(&other), "{n} {i}");
            }
            assert!(!p.matches(&key[..n.saturating_sub(1)]) || n == 0);
            assert!(!p.matches(&[&key[..], b"x"].concat()));
        }
    }

    #[test]
    fn a_catch_all_begins_with_a_wildcard() {
        for p in ["*", "**", "*:tmp", "?*", "[a-z]*", "[^x]"] {
            assert!(KeyPattern::new(p).is_catch_all(), "{p}");
        }
        for p in ["cache:*", "bull:*", "schedule", "b*", "\\*x", ""] {
            assert!(!KeyPattern::new(p).is_catch_all(), "{p}");
        }
    }

    #[test]
    fn redis_quirks_are_kept() {
        // `!` is literal; `^` negates.
        assert!(m("x[!a]", b"x!") && m("x[!a]", b"xa") && !m("x[!a]", b"xb"));
        assert!(m("x[^a]", b"xb") && !m("x[^a]", b"xa"));
        // An escaped `]` inside a class.
        assert!(m("[\\]]x", b"]x") && !m("[\\]]x", b"\\x"));
        // `[a-]x` is a range a..] (reversed) plus `x`, unterminated: one byte.
        assert!(m("[a-]x", b"_") && m("[a-]x", b"x") && !m("[a-]x", b"ax"));
        // Reversed ranges; unterminated classes; a trailing backslash.
        assert!(m("[z-a]", b"q"));
        assert!(!m("ab[", b"ab") && !m("ab[", b"abc"));
        assert!(!m("*[", b"") && !m("*[", b"x["));
        assert!(m("a\\", b"a\\") && !m("a\\", b"a"));
        // `**` does not match the empty key, unlike `*` (KEYS' shortcut).
        assert!(!m("**", b"") && m("**", b"x"));
        // Ranges compare signed bytes: 0xff sorts below 'a'.
        assert!(m("[\u{0}-a]", &[0x61]) && !m("[\u{0}-a]", &[0xff]));
    }
}
