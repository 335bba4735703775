//! Length lines (`$<n>\r\n`, `*<n>\r\n`) read in a few instructions: the request
//! scanner reads one per argument, the reply scanner one per bulk string, so they are
//! among the most frequent steps of the proxy.
//!
//! A line of one to three digits is read directly; one of up to six by testing eight bytes
//! at once; a longer one, or one near the end of the buffer, byte by byte. Anything that
//! is not a plain length (a sign, a leading zero, a partial line) is `None`, for the
//! caller's general path to read and word the error for.

/// A length line `<marker><n>\r` at `at` (`$` for a bulk, `*` for a count): the number and
/// the offset past the line (Redis assumes the `\n` after the `\r`; the line's nine bytes
/// must be in `buf` for the fast reading, and one byte past the `\r` for the other).
#[inline(always)]
pub(crate) fn length_line(buf: &[u8], at: usize, marker: u8) -> Option<(u64, usize)> {
    let (value, used) = length_line_at_front(buf.get(at..)?, marker)?;
    Some((value, at + used))
}

/// [`length_line`] at the front of `rest`: the number and the bytes the line takes. The
/// request scanner walks arguments with a shrinking slice, so the window's bounds are one
/// test of its length.
#[inline(always)]
pub(crate) fn length_line_at_front(rest: &[u8], marker: u8) -> Option<(u64, usize)> {
    // Nine bytes: the longest short line with its `\n`.
    if let Some(window) = rest.first_chunk::<9>() {
        let word = u64::from_le_bytes(*window.first_chunk::<8>()?);
        match short_length_line(word, marker) {
            Short::Line(value, used) => return Some((value, used)),
            Short::Not => return None,
            Short::Long => {}
        }
    }
    if rest.first() != Some(&marker) {
        return None;
    }
    plain_number(rest, 1)
}

/// What [`short_length_line`] read.
enum Short {
    /// A line of up to six digits: the number and the bytes the line takes (its `\n` too).
    Line(u64, usize),
    /// Not a plain length line.
    Not,
    /// Seven digits or more: read it byte by byte.
    Long,
}

/// The length line at the start of `word` (eight bytes, little-endian): `marker`, one to
/// six digits without a leading zero, `\r`. One to three digits are told by where the `\r`
/// is; four to six by testing every byte for being a digit at once: after `xor '0'` a
/// digit is 0..=9, and adding 0x76 to a byte's low seven bits sets its high bit exactly
/// when it is 10 or more.
#[inline(always)]
fn short_length_line(word: u64, marker: u8) -> Short {
    const ONES: u64 = 0x0101_0101_0101_0101;
    if word as u8 != marker {
        return Short::Not;
    }
    // One, two or three digits, the most common lines (names, counts, keys, values up to
    // 999 bytes), found by where the `\r` is: one test of a byte each, then the digits.
    let byte = |i: u32| (word >> (8 * i)) as u8;
    let digit = |i: u32| byte(i).wrapping_sub(b'0');
    if byte(2) == b'\r' {
        let first = digit(1);
        return if first <= 9 {
            Short::Line(u64::from(first), 4)
        } else {
            Short::Not
        };
    }
    let (first, second) = (digit(1), digit(2));
    if byte(3) == b'\r' {
        return if (1..=9).contains(&first) && second <= 9 {
            Short::Line(u64::from(first * 10 + second), 5)
        } else {
            Short::Not
        };
    }
    if byte(4) == b'\r' {
        let third = digit(3);
        return if (1..=9).contains(&first) && second <= 9 && third <= 9 {
            let value = u64::from(first) * 100 + u64::from(second) * 10 + u64::from(third);
            Short::Line(value, 6)
        } else {
            Short::Not
        };
    }
    // The seven bytes after the marker, each xor '0'; the eighth, past them, a non-digit.
    let digits = ((word >> 8) ^ ((b'0' as u64 * ONES) >> 8)) | (0xFF << 56);
    let not_digit = (((digits & (0x7F * ONES)) + 0x76 * ONES) | digits) & (0x80 * ONES);
    let n = (not_digit.trailing_zeros() / 8) as usize;
    if n == 7 {
        return Short::Long;
    }
    let leading_zero = n > 1 && digits as u8 == 0;
    if n == 0 || leading_zero || (digits >> (8 * n)) as u8 != b'\r' ^ b'0' {
        return Short::Not;
    }
    let mut value = 0;
    let mut rest = digits;
    for _ in 0..n {
        value = value * 10 + (rest & 0xFF);
        rest >>= 8;
    }
    Short::Line(value, n + 3)
}

/// A length line's number as the fast path reads it: 1 to 18 digits without a leading zero,
/// followed by `\r` and one more byte (Redis assumes the `\n`). Returns the number and
/// the offset past the line. `None` for anything else (a sign, a partial line, a malformed
/// one), which the general path then reads and words the error for.
#[inline(always)]
pub(crate) fn plain_number(buf: &[u8], at: usize) -> Option<(u64, usize)> {
    let line = buf.get(at..)?;
    let first = line.first()?.wrapping_sub(b'0');
    if first > 9 {
        return None;
    }
    let mut value = u64::from(first);
    let mut i = 1;
    loop {
        let digit = line.get(i)?.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        if i == 18 || first == 0 {
            return None;
        }
        value = value * 10 + u64::from(digit);
        i += 1;
    }
    if line[i] != b'\r' || i + 1 >= line.len() {
        return None;
    }
    Some((value, at + i + 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a length line means, read the plain way: the marker, 1 to 18 digits without a
    /// leading zero (a lone `0` is fine), `\r`, one more byte.
    fn reference(line: &[u8], marker: u8) -> Option<(u64, usize)> {
        if line.first() != Some(&marker) {
            return None;
        }
        let digits = line[1..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || digits > 18 || (digits > 1 && line[1] == b'0') {
            return None;
        }
        let end = 1 + digits;
        if line.get(end) != Some(&b'\r') || line.len() < end + 2 {
            return None;
        }
        let value = std::str::from_utf8(&line[1..end]).ok()?.parse().ok()?;
        Some((value, end + 2))
    }

    /// Every way of reading a line (one, two, three digits directly, up to six a word at a
    /// time, longer ones byte by byte, near the buffer's end) gives what the plain reading
    /// gives, for lengths around each number of digits and for malformed lines.
    #[test]
    fn every_length_line_reads_as_the_plain_reading() {
        let mut lines: Vec<Vec<u8>> = Vec::new();
        let numbers = (0..1_200u64).chain([
            9_999,
            10_000,
            99_999,
            100_000,
            999_999,
            1_000_000,
            123_456_789,
        ]);
        for n in numbers {
            for marker in [b'$', b'*'] {
                lines.push(format!("{}{n}\r\n$3\r\nabc", marker as char).into_bytes());
                lines.push(format!("{}{n}\r\n", marker as char).into_bytes());
                lines.push(format!("{}{n}\r", marker as char).into_bytes());
            }
        }
        for bad in [
            "$012\r\nxxxxxxx",
            "$01\r\nxxxxxxx",
            "$00\r\nxxxxxxx",
            "$1a3\r\nxxxxxxx",
            "$10a\r\nxxxxxxx",
            "$100a\r\nxxxxxx",
            "$100\n\rxxxxxxx",
            "$-10\r\nxxxxxxx",
            "$+10\r\nxxxxxxx",
            "$ 10\r\nxxxxxxx",
            "$\r\nxxxxxxxxxx",
            "*100\r\nxxxxxxx",
        ] {
            lines.push(bad.as_bytes().to_vec());
        }
        for line in &lines {
            for marker in [b'$', b'*'] {
                assert_eq!(
                    length_line(line, 0, marker),
                    reference(line, marker),
                    "{:?} {}",
                    String::from_utf8_lossy(line),
                    marker as char
                );
            }
        }
    }
}
