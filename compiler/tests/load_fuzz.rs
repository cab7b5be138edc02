//! Stage `load` robustness: mutated corpus and fixture layer files (bytes and lines deleted,
//! inserted, duplicated, swapped) must make `parse_layer` return `Ok` or `Err` — never panic —
//! and every error must carry a position inside the file and render without panicking.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ov_compiler::layer_parse::{parse_layer, ParseContext};
use proptest::prelude::*;

/// Seed texts: every corpus `layer.yml` (when the corpus is present) and every fixture.
fn seeds() -> &'static [String] {
    static SEEDS: OnceLock<Vec<String>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        let corpus = manifest.join("../../shared/corpus/overthink-3e714536/layers");
        if let Ok(rd) = std::fs::read_dir(&corpus) {
            files.extend(
                rd.filter_map(Result::ok)
                    .map(|e| e.path().join("layer.yml")),
            );
        } else if std::env::var_os("CI").is_some() {
            panic!(
                "corpus not found at {} (required under CI)",
                corpus.display()
            );
        } else {
            eprintln!(
                "corpus not found at {}; fuzzing fixtures only",
                corpus.display()
            );
        }
        if let Ok(rd) = std::fs::read_dir(manifest.join("tests/fixtures/load/layers")) {
            files.extend(rd.filter_map(Result::ok).map(|e| e.path()));
        }
        files.sort();
        let texts: Vec<String> = files
            .iter()
            .filter_map(|f| std::fs::read_to_string(f).ok())
            .collect();
        assert!(!texts.is_empty(), "no seed files");
        texts
    })
}

/// Characters that matter to YAML's grammar, plus a few that matter to terminals and UTF-8.
const ALPHABET: &[char] = &[
    ':',
    '-',
    ' ',
    '\n',
    '\t',
    '[',
    ']',
    '{',
    '}',
    ',',
    '&',
    '*',
    '!',
    '|',
    '>',
    '\'',
    '"',
    '#',
    '%',
    '@',
    '`',
    '?',
    '~',
    '0',
    '7',
    'a',
    'z',
    '\\',
    '\r',
    '\u{0}',
    '\u{1b}',
    '\u{feff}',
    'é',
    '\u{10ffff}',
];

#[derive(Debug, Clone)]
enum Mutation {
    DeleteChars { at: usize, len: usize },
    InsertChars { at: usize, chars: Vec<char> },
    DuplicateLine { line: usize },
    DeleteLine { line: usize },
    SwapLines { a: usize, b: usize },
    SwapChars { a: usize, b: usize },
    IndentLine { line: usize, by: usize },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(at, len)| Mutation::DeleteChars { at, len }),
        (
            any::<usize>(),
            prop::collection::vec(prop::sample::select(ALPHABET), 1..6)
        )
            .prop_map(|(at, chars)| Mutation::InsertChars { at, chars }),
        any::<usize>().prop_map(|line| Mutation::DuplicateLine { line }),
        any::<usize>().prop_map(|line| Mutation::DeleteLine { line }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapLines { a, b }),
        (any::<usize>(), any::<usize>()).prop_map(|(a, b)| Mutation::SwapChars { a, b }),
        (any::<usize>(), 1usize..5).prop_map(|(line, by)| Mutation::IndentLine { line, by }),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let n = chars.len().max(1);
    let nl = lines.len().max(1);
    match m {
        Mutation::DeleteChars { at, len } => {
            let at = at % n;
            let end = (at + len).min(chars.len());
            chars.drain(at.min(chars.len())..end);
            chars.into_iter().collect()
        }
        Mutation::InsertChars { at, chars: ins } => {
            let at = at % (chars.len() + 1);
            chars.splice(at..at, ins.iter().copied());
            chars.into_iter().collect()
        }
        Mutation::SwapChars { a, b } => {
            if !chars.is_empty() {
                chars.swap(a % n, b % n);
            }
            chars.into_iter().collect()
        }
        Mutation::DuplicateLine { line } => {
            let l = lines[line % nl].clone();
            lines.insert(line % nl, l);
            lines.join("\n")
        }
        Mutation::DeleteLine { line } => {
            lines.remove(line % nl);
            lines.join("\n")
        }
        Mutation::SwapLines { a, b } => {
            lines.swap(a % nl, b % nl);
            lines.join("\n")
        }
        Mutation::IndentLine { line, by } => {
            lines[line % nl].insert_str(0, &" ".repeat(*by));
            lines.join("\n")
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn mutated_layers_never_panic(
        seed in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let seeds = seeds();
        let mut text = seeds[seed.index(seeds.len())].clone();
        for m in &mutations {
            text = apply(&text, m);
        }
        let ctx = ParseContext::builtin();
        match parse_layer("fuzz", Path::new("layers/fuzz/layer.yml"), &text, &ctx) {
            Ok(layer) => {
                prop_assert_eq!(layer.name, "fuzz");
            }
            Err(e) => {
                let rendered = e.to_string();
                prop_assert!(rendered.starts_with("layers/fuzz/layer.yml"), "{}", rendered);
                if let Some(d) = e.diagnostic() {
                    let lines = text.split('\n').count() as u32;
                    prop_assert!(d.line <= lines + 1, "line {} beyond {} lines: {}", d.line, lines, rendered);
                    prop_assert!(!rendered.contains('\u{1b}'), "escape reached the message: {:?}", rendered);
                }
            }
        }
    }
}

#[test]
fn mutations_do_change_the_input() {
    // Guards the generator: the property above is only meaningful if inputs really differ.
    let base = "layer:\n  name: x\n";
    let m = Mutation::InsertChars {
        at: 7,
        chars: vec![':'],
    };
    assert_ne!(apply(base, &m), base);
    assert_eq!(apply(base, &Mutation::DeleteLine { line: 1 }), "layer:\n");
    assert_eq!(
        apply(base, &Mutation::SwapLines { a: 0, b: 1 }),
        "  name: x\nlayer:\n"
    );
}
