//! Every stage, errors as text: an error's message and the causes under it, the way `ov`
//! prints them (`caused by:` lines, as cargo and uv do).
//! Invariant: a cause whose text the message already quotes is not said twice.

use std::error::Error;

/// `error`'s message, then `\n  caused by: …` for each source whose text was not already said.
/// Multi-line messages (located YAML errors with their source line) are kept as they are.
pub fn with_causes(error: &(dyn Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str("\n  caused by: ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}
