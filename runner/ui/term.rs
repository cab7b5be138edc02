//! Stage `runner`, the ui room: text on its way to a terminal. Layer files, bundles and targets
//! are untrusted, and their values reach what `ov` prints (plan lines, errors, a bundle's
//! signer, a target's ledger and progress lines).
//! Invariant: no control character but newline and tab reaches stdout or stderr through [`safe`]
//! — an escape sequence in a value cannot retitle, clear or rewrite the user's terminal.

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

/// Print one line of untrusted text on stdout, made [`safe`].
pub fn say(line: &str) {
    println!("{}", safe(line));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_and_carriage_returns_are_replaced_lines_and_tabs_kept() {
        assert!(matches!(safe("plain\ttext\n"), Cow::Borrowed(_)));
        assert_eq!(
            safe("echo \u{1b}]0;pwned\u{7} \u{1b}[2J\r\u{9b}31m\u{7f}x\ny"),
            "echo \u{fffd}]0;pwned\u{fffd} \u{fffd}[2J\u{fffd}\u{fffd}31m\u{fffd}x\ny"
        );
    }
}
