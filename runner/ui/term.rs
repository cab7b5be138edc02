//! Stage `runner`, the ui room: text on its way to a terminal. Layer files, bundles and targets
//! are untrusted, and their values reach what `ov` prints (plan lines, errors, a bundle's
//! signer, a target's ledger and progress lines).
//! Invariant: no control character but newline and tab reaches stdout or stderr through [`safe`]
//! — an escape sequence in a value cannot retitle, clear or rewrite the user's terminal — and no
//! error line is longer than [`MAX_LINE_CHARS`] through [`cropped`].

use std::borrow::Cow;

/// `text` with every control character (C0 and C1: ESC, BEL, CR, CSI…) but `\n` and `\t`
/// replaced by `�`; borrowed when there is none.
pub fn safe(text: &str) -> Cow<'_, str> {
    let bad = |c: char| c.is_control() && c != '\n' && c != '\t';
    if text.chars().any(bad) {
        text.chars()
            .map(|c| if bad(c) { '\u{fffd}' } else { c })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// The most characters of one line of an error shown (a value quoted from a file can be any size).
pub const MAX_LINE_CHARS: usize = 1000;

/// `text` with each line longer than [`MAX_LINE_CHARS`] cut in its middle, saying how much was
/// left out; borrowed when none is.
pub fn cropped(text: &str) -> Cow<'_, str> {
    if text.lines().all(|l| l.chars().count() <= MAX_LINE_CHARS) {
        return text.into();
    }
    let keep = MAX_LINE_CHARS / 2;
    let lines: Vec<String> = text
        .split('\n')
        .map(|l| {
            let n = l.chars().count();
            if n <= MAX_LINE_CHARS {
                return l.to_string();
            }
            let head: String = l.chars().take(keep).collect();
            let tail: String = l.chars().skip(n - keep).collect();
            format!("{head} …[{} characters left out]… {tail}", n - 2 * keep)
        })
        .collect();
    lines.join("\n").into()
}

/// Print one line of untrusted text on stdout, made [`safe`].
pub fn say(line: &str) {
    println!("{}", safe(line));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_long_lines_are_cropped_in_their_middle() {
        assert!(matches!(cropped("short\nlines"), Cow::Borrowed(_)));
        let long = format!("a{}z", "x".repeat(5000));
        let text = format!("first\n{long}\nlast");
        let out = cropped(&text);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!((lines[0], lines[2]), ("first", "last"));
        assert!(
            lines[1].starts_with('a') && lines[1].ends_with('z'),
            "{}",
            lines[1]
        );
        assert!(
            lines[1].contains("…[4002 characters left out]…"),
            "{}",
            lines[1]
        );
        assert!(lines[1].chars().count() < MAX_LINE_CHARS + 50);
    }

    #[test]
    fn escape_sequences_and_carriage_returns_are_replaced_lines_and_tabs_kept() {
        assert!(matches!(safe("plain\ttext\n"), Cow::Borrowed(_)));
        assert_eq!(
            safe("echo \u{1b}]0;pwned\u{7} \u{1b}[2J\r\u{9b}31m\u{7f}x\ny"),
            "echo \u{fffd}]0;pwned\u{fffd} \u{fffd}[2J\u{fffd}\u{fffd}31m\u{fffd}x\ny"
        );
    }
}
