//! Stage `runner`, errors on their way out: the one printer of a failed command — `error: …` and
//! one `caused by: …` line per source, as cargo and uv print them; with `--json`, the same text as
//! one `{"event": "error", …}` line on stdout.
//! Invariant: every command's failure is printed here, once, after the progress display closed.

use std::error::Error;

use serde_json::json;

use crate::exit::Exit;

/// The error's message, then `\n  caused by: …` for each source whose text was not already
/// said (an error that quotes its source's message does not print it twice). Multi-line
/// messages (located YAML errors with their source line) are kept as they are.
pub fn render(error: &(dyn Error + 'static)) -> String {
    ov_compiler::errors::with_causes(error)
}

/// Print a failed command's error: on stderr, or as a JSON line on stdout with `json`.
pub fn report(error: &(dyn Error + 'static), exit: Exit, json: bool) {
    let text = render(error);
    if json {
        println!(
            "{}",
            json!({"event": "error", "exit": exit.code(), "message": text})
        );
    } else {
        eprintln!("error: {}", super::term::safe(&super::term::cropped(&text)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct E {
        text: &'static str,
        #[source]
        source: Option<Box<E>>,
    }

    fn e(text: &'static str, source: Option<E>) -> E {
        E {
            text,
            source: source.map(Box::new),
        }
    }

    #[test]
    fn each_source_on_its_own_line_once() {
        let err = e(
            "cannot push",
            Some(e("cannot read `x`", Some(e("denied", None)))),
        );
        assert_eq!(
            render(&err),
            "cannot push\n  caused by: cannot read `x`\n  caused by: denied"
        );
        let quoting = e("cannot read `x`: denied", Some(e("denied", None)));
        assert_eq!(render(&quoting), "cannot read `x`: denied");
    }
}
