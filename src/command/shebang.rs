//! A script's shebang (`#!lua flags=no-writes,allow-oom`): the flags it declares, which
//! Redis uses instead of the command's own (a `no-writes` script runs on a read-only
//! replica, under `maxmemory`, and is never propagated). Read by the shed guard's script
//! catalog and by a cluster router deciding where a script may be read.

/// The flags of a `#!lua flags=a,b` first line; `None` without a shebang, and an empty list
/// for a shebang without flags.
pub fn shebang_flags(body: &[u8]) -> Option<Vec<&[u8]>> {
    let line = body.strip_prefix(b"#!")?;
    let line = &line[..line.iter().position(|&b| b == b'\n').unwrap_or(line.len())];
    let flags = line
        .split(|&b| b == b' ')
        .find_map(|word| word.strip_prefix(b"flags="))
        .unwrap_or_default();
    Some(
        flags
            .split(|&b| b == b',')
            .map(|f| f.trim_ascii())
            .filter(|f| !f.is_empty())
            .collect(),
    )
}

/// Whether the script `body` declares `no-writes` in its shebang.
pub fn declares_no_writes(body: &[u8]) -> bool {
    shebang_flags(body).is_some_and(|flags| flags.contains(&&b"no-writes"[..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_shebang_s_flags_word_declares_no_writes() {
        assert!(declares_no_writes(b"#!lua flags=no-writes\nreturn 1"));
        assert!(declares_no_writes(
            b"#!lua flags=allow-stale,no-writes\nreturn 1"
        ));
        assert!(!declares_no_writes(b"#!lua flags=allow-oom\nreturn 1"));
        assert!(!declares_no_writes(b"#!lua\nreturn 1"));
        assert!(!declares_no_writes(b"-- flags=no-writes\nreturn 1"));
        assert!(!declares_no_writes(b"#!lua\n-- flags=no-writes"));
        assert_eq!(shebang_flags(b"#!lua name=x"), Some(Vec::new()));
        assert_eq!(shebang_flags(b"return 1"), None);
    }
}
