//! The corpus of runbooks: every file in `tests/corpus/broken` holds one kind of mistake and
//! declares, in its leading comments, exactly the diagnostics it must produce:
//!
//! ```yaml
//! # expect: 7:5 unknown-key unknown key `timout`
//! ```
//!
//! (`line:column`, then the code, then the message; one line per diagnostic, in order; `-` instead
//! of `line:column` for a diagnostic without a position). Their rendered form is snapshotted, and
//! the `runbook validate` binary is run on each of them. Files in `tests/corpus/valid` must compile
//! cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use runbook::compile::compile_path;
use runbook::diagnostic::{Diagnostic, SourceFile, render};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const EXPECT: &str = "# expect: ";

/// The `.yaml` files of `tests/corpus/<dir>`, sorted.
fn corpus(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(ROOT).join("tests/corpus").join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The path as shown in diagnostics: relative to the crate, with `/` separators.
fn relative(path: &Path) -> String {
    let rel = path.strip_prefix(ROOT).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

/// The `# expect:` lines of the file's leading comment block.
fn expectations(text: &str) -> Vec<String> {
    text.lines()
        .take_while(|l| l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(EXPECT))
        .map(|e| e.trim_end().to_owned())
        .collect()
}

/// A diagnostic the way `# expect:` lines write it.
fn describe(d: &Diagnostic) -> String {
    match d.span {
        Some(s) => format!("{}:{} {} {}", s.line, s.column, d.code, d.message),
        None => format!("- {} {}", d.code, d.message),
    }
}

/// Compile a corpus file through the library; the source file is named relative to the crate.
fn compile(path: &Path) -> (SourceFile, Vec<Diagnostic>) {
    match compile_path(path) {
        Ok(_) => {
            let text = std::fs::read_to_string(path).expect("corpus file is readable");
            (SourceFile::new(relative(path), text), Vec::new())
        }
        Err((file, diags)) => (SourceFile::new(relative(path), file.text), diags),
    }
}

#[test]
fn the_corpus_is_large_enough() {
    let broken = corpus("broken");
    assert!(broken.len() >= 30, "only {} broken runbooks", broken.len());
    assert!(!corpus("valid").is_empty());
}

#[test]
fn broken_runbooks_report_exactly_the_expected_diagnostics() {
    let mut failures = Vec::new();
    for path in corpus("broken") {
        let (file, diags) = compile(&path);
        let expected = expectations(&file.text);
        let actual: Vec<String> = diags.iter().map(describe).collect();
        if expected.is_empty() {
            failures.push(format!("{}: no `{EXPECT}` lines", file.name));
        } else if actual != expected {
            let list = |v: &[String]| {
                v.iter()
                    .map(|l| format!("  {EXPECT}{l}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            failures.push(format!(
                "{}\n expected:\n{}\n actual:\n{}",
                file.name,
                list(&expected),
                list(&actual)
            ));
        }
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n\n"));
}

#[test]
fn broken_runbooks_render_as_human_diagnostics() {
    insta::glob!("corpus/broken/*.yaml", |path| {
        let (file, diags) = compile(path);
        assert!(!diags.is_empty(), "{} compiled", file.name);
        let rendered = render(&file, &diags, false);
        assert!(
            !rendered.contains('\u{1b}'),
            "colour codes with color = false"
        );
        insta::assert_snapshot!(rendered);
    });
}

#[test]
fn short_diagnostics_are_one_line_each() {
    for path in corpus("broken") {
        let (file, diags) = compile(&path);
        for d in &diags {
            let short = d.short(&file);
            let s = d.span.expect("corpus diagnostics have positions");
            assert_eq!(
                short,
                format!("{}:{}:{}: {}", file.name, s.line, s.column, d.message)
            );
            assert!(!short.contains('\n'), "{short}");
        }
    }
}

#[test]
fn valid_runbooks_compile_cleanly() {
    for path in corpus("valid") {
        let (file, diags) = compile(&path);
        assert!(
            diags.is_empty(),
            "{} should compile:\n{}",
            file.name,
            render(&file, &diags, false)
        );
    }
}

/// Run the real binary from the crate root.
fn runbook(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_runbook"))
        .current_dir(ROOT)
        .env("NO_COLOR", "1")
        .args(args)
        .output()
        .expect("the runbook binary runs")
}

/// The process ended by itself with a code (not killed), and did not panic.
fn assert_no_panic(what: &str, out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
    assert_ne!(out.status.code(), Some(101), "{what} panicked:\n{stderr}");
    assert!(
        out.status.code().is_some(),
        "{what} was killed: {:?}",
        out.status
    );
    stderr
}

#[test]
fn validate_rejects_every_broken_runbook_without_panicking() {
    for path in corpus("broken") {
        let rel = relative(&path);
        for format in ["human", "short"] {
            let out = runbook(&["--message-format", format, "validate", &rel]);
            let what = format!("`runbook --message-format {format} validate {rel}`");
            let stderr = assert_no_panic(&what, &out);
            assert_eq!(out.status.code(), Some(2), "{what}:\n{stderr}");
            assert!(!stderr.trim().is_empty(), "{what} printed nothing");
            if format == "short" {
                let text = std::fs::read_to_string(&path).expect("corpus file is readable");
                for e in expectations(&text) {
                    let (at, rest) = e.split_once(' ').expect("`# expect:` has a position");
                    let (_code, message) = rest.split_once(' ').expect("`# expect:` has a code");
                    let line = format!("{rel}:{at}: {message}");
                    assert!(
                        stderr.lines().any(|l| l == line),
                        "{what} lacks `{line}`:\n{stderr}"
                    );
                }
            }
        }
    }
}

#[test]
fn validate_accepts_every_valid_runbook() {
    for path in corpus("valid") {
        let rel = relative(&path);
        let out = runbook(&["validate", &rel]);
        let what = format!("`runbook validate {rel}`");
        let stderr = assert_no_panic(&what, &out);
        assert_eq!(out.status.code(), Some(0), "{what}:\n{stderr}");
    }
}

#[test]
fn validate_checks_every_file_given() {
    let broken = corpus("broken");
    let mut args = vec!["validate".to_owned()];
    args.extend(corpus("valid").iter().map(|p| relative(p)));
    args.extend(broken.iter().map(|p| relative(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = runbook(&args);
    let stderr = assert_no_panic("`runbook validate` on the whole corpus", &out);
    assert_eq!(out.status.code(), Some(2));
    for path in &broken {
        let rel = relative(path);
        assert!(stderr.contains(&rel), "nothing about {rel}:\n{stderr}");
    }
}

mod mutations {
    //! Compiling and rendering never panic, whatever the text: random edits of corpus files.

    use proptest::prelude::*;

    use super::{ROOT, corpus};
    use runbook::compile::compile;
    use runbook::diagnostic::{SourceFile, render};

    /// Fragments that matter to YAML, templates and the compiler.
    const PIECES: &[&str] = &[
        ":", ": ", "-", "- ", " ", "  ", "\n", "\t", "[", "]", "{", "}", "\"", "'", "#", "{{",
        "}}", "{%", "|", ">", "&a", "*a", "é", "→", "needs: [", "id: x", "0", "-1", "true", "~",
        "\\",
    ];

    #[derive(Debug, Clone)]
    enum Edit {
        Insert(prop::sample::Index, &'static str),
        Delete(prop::sample::Index, usize),
        DuplicateLine(prop::sample::Index),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (any::<prop::sample::Index>(), prop::sample::select(PIECES))
                .prop_map(|(i, p)| Edit::Insert(i, p)),
            (any::<prop::sample::Index>(), 1usize..12).prop_map(|(i, n)| Edit::Delete(i, n)),
            any::<prop::sample::Index>().prop_map(Edit::DuplicateLine),
        ]
    }

    /// The char boundary at or before `i`.
    fn boundary(s: &str, mut i: usize) -> usize {
        i = i.min(s.len());
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        i
    }

    fn apply(text: &str, edits: &[Edit]) -> String {
        let mut s = text.to_owned();
        for e in edits {
            match e {
                Edit::Insert(at, piece) => {
                    let i = boundary(&s, at.index(s.len() + 1));
                    s.insert_str(i, piece);
                }
                Edit::Delete(at, n) => {
                    let i = boundary(&s, at.index(s.len() + 1));
                    let j = boundary(&s, i + n);
                    s.replace_range(i..j, "");
                }
                Edit::DuplicateLine(at) => {
                    let lines: Vec<&str> = s.split_inclusive('\n').collect();
                    if !lines.is_empty() {
                        let k = at.index(lines.len());
                        let mut out: String = lines[..=k].concat();
                        out.push_str(lines[k]);
                        out.push_str(&lines[k + 1..].concat());
                        s = out;
                    }
                }
            }
        }
        s
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn compiling_edited_runbooks_never_panics(
            file in any::<prop::sample::Index>(),
            edits in prop::collection::vec(edit(), 1..4),
        ) {
            let mut files = corpus("valid");
            files.extend(corpus("broken"));
            let path = &files[file.index(files.len())];
            let text = apply(&std::fs::read_to_string(path).expect("corpus file is readable"), &edits);
            let source = SourceFile::new("edited.yaml", text.as_str());
            if let Err(diags) = compile(source.clone(), &std::path::Path::new(ROOT).join("edited.yaml")) {
                prop_assert!(!diags.is_empty());
                let rendered = render(&source, &diags, false);
                prop_assert!(!rendered.is_empty());
                for d in &diags {
                    let _ = d.short(&source);
                    if let Some(s) = d.span {
                        prop_assert!(s.line >= 1 && s.column >= 1, "{:?} at {:?}", d.message, s);
                        if let Some(o) = s.offset {
                            prop_assert!(text.is_char_boundary(o), "{:?}: offset {} inside a character", d.message, o);
                            prop_assert_eq!(source.line_col(o), (s.line, s.column), "{:?}", d.message);
                        }
                    }
                }
            }
        }
    }
}
