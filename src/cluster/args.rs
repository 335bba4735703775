//! A command's arguments as the router reads them: borrowed from the bytes the session
//! sent, at the positions the scanner found ([`Args`], nothing copied), and names compared
//! in upper case in a buffer on the stack ([`Upper`]), so that routing a command allocates
//! nothing of its own.

use std::ops::{Deref, Range};

use crate::scanner::request::{Limits, RequestScanner, Step};

/// The longest word [`Upper`] upper-cases; every command, subcommand and keyword the router
/// compares is shorter.
const UPPER_MAX: usize = 32;

/// One command's arguments (argument 0 its name), borrowed.
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    source: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    /// The arguments lying at `ranges` in `source` (the scanner's positions in the
    /// command's bytes).
    pub fn new(source: &'a [u8], ranges: &'a [Range<usize>]) -> Self {
        Args { source, ranges }
    }

    /// How many arguments, the name included.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// True when there is none (the scanner never gives such a command).
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Argument `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<&'a [u8]> {
        self.ranges.get(i).and_then(|r| self.source.get(r.clone()))
    }

    /// Argument `i` upper-cased (empty when there is none).
    pub fn upper(&self, i: usize) -> Upper<'a> {
        Upper::of(self.get(i).unwrap_or_default())
    }

    /// Every argument, collected: for the paths that rewrite a command (a split across
    /// slots, `SCAN`'s cursor), off the one-slot path.
    pub fn to_vec(&self) -> Vec<&'a [u8]> {
        (0..self.len()).filter_map(|i| self.get(i)).collect()
    }
}

/// `read` given the arguments of `command`, one whole command as a session stored it (so
/// already within the session's limits: it is scanned without any); `None` when the bytes
/// are not one whole command. Off the one-slot path: for the commands the router reads
/// again after routing (credentials, whether a command may wait).
pub fn read_stored<T>(command: &[u8], read: impl FnOnce(Args<'_>) -> T) -> Option<T> {
    let mut scanner = RequestScanner::new(Limits {
        stream_threshold: u64::MAX,
        max_buffered_command: usize::MAX,
        ..Limits::default()
    });
    let Step::Command { .. } = scanner.scan(command) else {
        return None;
    };
    Some(read(Args::new(command, scanner.args())))
}

/// A word upper-cased on the stack. A word longer than [`UPPER_MAX`] bytes is kept as
/// given: no name the router compares is that long, so it matches none, as it should.
#[derive(Clone, Copy)]
pub struct Upper<'a> {
    buf: [u8; UPPER_MAX],
    len: usize,
    long: Option<&'a [u8]>,
}

impl<'a> Upper<'a> {
    /// `word` in upper case.
    pub fn of(word: &'a [u8]) -> Self {
        let mut buf = [0; UPPER_MAX];
        if word.len() > UPPER_MAX {
            return Upper {
                buf,
                len: 0,
                long: Some(word),
            };
        }
        for (to, from) in buf.iter_mut().zip(word) {
            *to = from.to_ascii_uppercase();
        }
        Upper {
            buf,
            len: word.len(),
            long: None,
        }
    }
}

impl Deref for Upper<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self.long {
            Some(word) => word,
            None => &self.buf[..self.len],
        }
    }
}

impl std::fmt::Debug for Upper<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_read_in_place_and_words_upper_cased_on_the_stack() {
        let bytes = b"*2\r\n$3\r\ngEt\r\n$1\r\nk\r\n";
        let ranges = [8..11, 17..18];
        let args = Args::new(bytes, &ranges);
        assert_eq!(args.len(), 2);
        assert_eq!(args.get(1), Some(&b"k"[..]));
        assert_eq!(args.get(2), None);
        assert_eq!(&*args.upper(0), b"GET");
        assert_eq!(&*args.upper(5), b"");
        assert_eq!(args.to_vec(), [&b"gEt"[..], b"k"]);
        assert_eq!(read_stored(bytes, |a| a.len()), Some(2));
        assert_eq!(
            read_stored(&bytes[..bytes.len() - 1], |a| a.len()),
            None,
            "a command cut short is not read"
        );
        let long = [b'a'; 40];
        assert_eq!(
            &*Upper::of(&long),
            &long[..],
            "a long word is kept as given"
        );
    }
}
