//! Text that comes from volumes or the host (file names, link targets,
//! archive entries, paths, labels) as printed for a terminal. A name is
//! whatever a sandbox chose, and a control character in it would reach
//! the operator's terminal as a command (retitle, clear, move the cursor),
//! so such characters are shown escaped.

use std::ffi::OsStr;
use std::fmt::Write;
use std::os::unix::ffi::OsStrExt;

/// `text` with control characters (C0, DEL, C1), invalid UTF-8 and `\`
/// escaped: `\n`, `\t`, `\r`, `\\`, and `\xNN` for every other such byte
/// (a C1 character is its two UTF-8 bytes). Reading each `\xNN` back as
/// one byte gives the original. Everything else is printed as it is.
pub(crate) fn escape(text: &(impl AsRef<OsStr> + ?Sized)) -> String {
    let bytes = text.as_ref().as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() => {
                    for b in c.encode_utf8(&mut [0; 4]).bytes() {
                        hex(&mut out, b);
                    }
                }
                c => out.push(c),
            }
        }
        for &b in chunk.invalid() {
            hex(&mut out, b);
        }
    }
    out
}

fn hex(out: &mut String, b: u8) {
    let _ = write!(out, "\\x{b:02x}");
}

/// `e` and its causes as one message, escaped: error messages quote names
/// from the volume or an archive. Printed the way the caller prints any
/// error chain (`: ` between causes), so nothing else changes.
pub(crate) fn escape_error(e: Box<dyn std::error::Error>) -> Box<dyn std::error::Error> {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    escape(&msg).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_and_bad_utf8_are_escaped() {
        assert_eq!(escape("a\x1b]0;pwned\x07b"), "a\\x1b]0;pwned\\x07b");
        assert_eq!(escape("\x1b[2J"), "\\x1b[2J");
        assert_eq!(escape("l1\nl2\tx\ry\x7f"), "l1\\nl2\\tx\\ry\\x7f");
        assert_eq!(escape("\u{9b}31m"), "\\xc2\\x9b31m");
        assert_eq!(
            escape(OsStr::from_bytes(b"bad\xff\xfe.txt")),
            "bad\\xff\\xfe.txt"
        );
        assert_eq!(escape("back\\x1b"), "back\\\\x1b");
        // Printable text, other scripts included, is left alone.
        assert_eq!(escape("notes/été 日本 ok.txt"), "notes/été 日本 ok.txt");
    }
}
