//! Text from a plugin (or a server) on the user's terminal.
//!
//! A terminal obeys the bytes it is sent: an escape sequence can clear the screen, retitle the
//! window or recolour what follows, a carriage return can overwrite a line the host printed,
//! a bidirectional override can reverse how a line reads, and a line break can start a line
//! that looks like the host's own ("best score: 99.0"). Whatever a plugin supplies is passed
//! through these functions before it is printed; the files of a run keep it as it was sent.

/// Bytes of an error shown on the terminal; the rest is cut (the run's `log.txt` and run log
/// keep it whole).
pub const SHOWN_ERROR_BYTES: usize = 4096;

/// `text` as one line: every control character (line breaks included), and every character
/// that reorders or hides text, written as a visible escape (`\n`, `\u{1b}`, ...).
pub fn line(text: &str) -> String {
    escaped(text, Breaks::Escaped)
}

/// `text` over several lines (a prompt): line breaks kept, everything else as in [`line`].
pub fn block(text: &str) -> String {
    escaped(text, Breaks::Kept)
}

/// `text` over several lines, every later line indented by two spaces (so no line of an error
/// can pass for one the host printed), everything else as in [`line`].
pub fn indented(text: &str) -> String {
    escaped(text, Breaks::Indented)
}

/// An error for the terminal: cut to [`SHOWN_ERROR_BYTES`], then [`indented`].
pub fn error(message: &str) -> String {
    indented(&cut(message, SHOWN_ERROR_BYTES))
}

/// `text` cut to `limit` bytes (at a character boundary), saying how much was left out.
pub fn cut(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let end = text.floor_char_boundary(limit);
    format!(
        "{}... [{} more bytes not shown]",
        &text[..end],
        text.len() - end
    )
}

/// What [`escaped`] does with a line break.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Breaks {
    Escaped,
    Kept,
    Indented,
}

fn escaped(text: &str, breaks: Breaks) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' if breaks == Breaks::Kept => out.push('\n'),
            '\n' if breaks == Breaks::Indented => out.push_str("\n  "),
            '\t' => out.push('\t'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// Characters a terminal acts on or that change how the text around them reads: C0 and C1
/// controls, DEL, the bidirectional embeddings, overrides, isolates and marks, zero-width
/// characters, and the line and paragraph separators.
fn hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{061c}'
                | '\u{feff}'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOSTILE: &str = "\u{1b}[2J\u{1b}[31mred\rbest score: 99.0\nbest score: 99.0 \u{202e}txet\u{1b}]0;owned\u{7}\u{9b}";

    #[test]
    fn a_line_holds_no_control_and_no_break() {
        let shown = line(HOSTILE);
        assert_eq!(
            shown,
            "\\u{1b}[2J\\u{1b}[31mred\\rbest score: 99.0\\nbest score: 99.0 \\u{202e}txet\\u{1b}]0;owned\\u{7}\\u{9b}"
        );
        assert!(!shown.chars().any(hidden));
        assert!(!shown.contains('\n'));
    }

    #[test]
    fn a_block_keeps_its_breaks_and_escapes_the_rest() {
        let shown = block(HOSTILE);
        assert!(!shown.chars().any(|c| hidden(c) && c != '\n'));
        let later: Vec<&str> = shown.lines().skip(1).collect();
        assert_eq!(
            later,
            ["best score: 99.0 \\u{202e}txet\\u{1b}]0;owned\\u{7}\\u{9b}"]
        );
        assert_eq!(block("a\tb\n"), "a\tb\n");
    }

    #[test]
    fn indented_text_has_no_later_line_at_the_margin() {
        let shown = indented(HOSTILE);
        assert!(!shown.chars().any(|c| hidden(c) && c != '\n'));
        let later: Vec<&str> = shown.lines().skip(1).collect();
        assert_eq!(
            later,
            ["  best score: 99.0 \\u{202e}txet\\u{1b}]0;owned\\u{7}\\u{9b}"]
        );
    }

    #[test]
    fn cut_keeps_short_text_and_cuts_long_text_at_a_character_boundary() {
        assert_eq!(cut("short", 10), "short");
        let long = format!("{}é{}", "x".repeat(9), "y".repeat(100));
        assert_eq!(
            cut(&long, 10),
            format!("{}... [102 more bytes not shown]", "x".repeat(9))
        );
    }
}
