//! Client input in human-readable lines: what an error message, a log line or a CLI line
//! may repeat of it.
//!
//! A newline in a token's `kid`, `iss` or a mapped subject must not start a forged log
//! line, and a 9 KB header value must not come back whole in a response or an audit
//! line: every echo of client input goes through [`echo`] (short, escaped), and the
//! human-readable log format escapes control characters in every field
//! ([`escape_control`]).

use std::borrow::Cow;
use std::fmt::Write as _;

/// The most bytes of one client-supplied value an error message repeats.
pub const ECHO_MAX: usize = 64;

/// `s` as an error message may repeat it: control characters escaped (`\n`, `\u{1b}`),
/// cut to [`ECHO_MAX`] bytes on a character boundary, with `…` when cut.
pub fn echo(s: &str) -> String {
    let mut end = s.len().min(ECHO_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let head = s.get(..end).unwrap_or_default();
    let mut out = escape_control(head).into_owned();
    if end < s.len() {
        out.push('…');
    }
    out
}

/// `s` with every control character (C0, DEL, C1) written as its Rust escape, so it
/// stays on one line and cannot drive a terminal; unchanged (and not copied) when it has
/// none.
pub fn escape_control(s: &str) -> Cow<'_, str> {
    if !s.chars().any(char::is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c.is_control() {
            let _ = write!(out, "{}", c.escape_default());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_is_short_and_on_one_line() {
        assert_eq!(echo("kid-1"), "kid-1");
        assert_eq!(echo("a\nb\r\u{1b}[31m"), "a\\nb\\r\\u{1b}[31m");
        let long = "é".repeat(100);
        let shown = echo(&long);
        assert!(shown.len() <= ECHO_MAX + '…'.len_utf8(), "{}", shown.len());
        assert!(shown.ends_with('…'));
        assert!(matches!(escape_control("plain"), Cow::Borrowed(_)));
        assert_eq!(escape_control("\u{85}x"), "\\u{85}x");
    }
}
