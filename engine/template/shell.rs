//! POSIX shell quoting states over a `run:` command, to know where each template value lands.
//!
//! Values never enter the script text: each becomes an environment variable, and the script
//! holds a reference to it. This lexer only decides how the reference is written (`"${RB_V1}"`
//! outside quotes, `${RB_V1}` inside `"…"` or an unquoted here-document body) and which places
//! cannot hold a reference at all (single quotes, quoted here-documents, backticks, `${…}`,
//! `$((…))`, right after `\` or `$`). A mistake here can misplace a reference, never turn a
//! value into code: the shell does not re-parse the result of an expansion.

use std::collections::VecDeque;

/// One input unit: a literal character or a hole where a template value goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tok {
    /// A character of the author's text.
    Char(char),
    /// A template value.
    Hole,
}

/// Where a hole lands, and so how its reference is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Outside any quotes: `"${RB_V1}"` (quoted, so the value is not split or globbed).
    Bare,
    /// Inside `"…"`: `${RB_V1}`.
    DoubleQuoted,
    /// In the body of an unquoted here-document: `${RB_V1}` (`"` is literal there).
    HeredocBody,
}

/// A place where no reference can carry a value as data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unsafe {
    /// Inside `'…'`: nothing expands there.
    SingleQuotes,
    /// Inside `$'…'`.
    AnsiCQuotes,
    /// In the body of a here-document whose delimiter is quoted (`<<'EOF'`): nothing expands.
    QuotedHeredoc,
    /// In a here-document's delimiter word.
    HeredocDelimiter,
    /// Inside backticks, whose text is re-parsed with its own escaping rules.
    Backticks,
    /// Inside a parameter expansion `${…}`.
    ParamExpansion,
    /// Inside an arithmetic expansion `$((…))`, whose operands some shells evaluate as code.
    Arithmetic,
    /// Right after a `\`, which would escape the reference's first character.
    AfterBackslash,
    /// Right after a `$`, which would combine with the reference (`$$`, `$"`).
    AfterDollar,
}

impl Unsafe {
    /// The place, as a diagnostic names it.
    pub fn what(self) -> &'static str {
        match self {
            Unsafe::SingleQuotes => "inside single quotes `'…'`, where nothing expands",
            Unsafe::AnsiCQuotes => "inside `$'…'`, where nothing expands",
            Unsafe::QuotedHeredoc => {
                "in the body of a quoted here-document (`<<'EOF'`), where nothing expands"
            }
            Unsafe::HeredocDelimiter => "in a here-document's delimiter",
            Unsafe::Backticks => "inside backticks `` `…` ``",
            Unsafe::ParamExpansion => "inside a parameter expansion `${…}`",
            Unsafe::Arithmetic => {
                "inside an arithmetic expansion `$((…))`, whose operands some shells evaluate as code"
            }
            Unsafe::AfterBackslash => "right after a `\\`",
            Unsafe::AfterDollar => "right after a `$`",
        }
    }

    /// How to fix it.
    pub fn fix(self) -> &'static str {
        match self {
            Unsafe::SingleQuotes | Unsafe::AnsiCQuotes => {
                "move the template out of the single quotes, e.g. `echo 'a: '{{ x }}` or `echo \"a: {{ x }}\"` (values reach the shell as data); `{{ x | safe }}` inserts trusted text raw"
            }
            Unsafe::QuotedHeredoc => {
                "use an unquoted delimiter (`<<EOF`): the value is then expanded as data, never parsed"
            }
            Unsafe::HeredocDelimiter => "write the delimiter literally",
            Unsafe::Backticks => "use `$(…)` instead of backticks",
            Unsafe::ParamExpansion | Unsafe::Arithmetic => {
                "assign the value to a variable first, e.g. `n={{ x }}; …` and use `$n` there (check that it is what you expect)"
            }
            Unsafe::AfterBackslash | Unsafe::AfterDollar => {
                "remove the `\\`/`$` before the template, or put a space or quotes between them"
            }
        }
    }
}

/// What the lexer is inside.
#[derive(Debug, Clone)]
enum Frame {
    /// Commands: the top level, or inside `$(…)` (with its count of open `(`).
    Cmd { nested: bool, parens: u32 },
    /// `"…"`.
    Dq,
    /// `'…'`.
    Sq,
    /// `$'…'`.
    AnsiC,
    /// `` `…` ``.
    Backtick,
    /// `${…}` with its count of open `{`.
    Param { depth: u32 },
    /// `$((…))` with its count of open `(`.
    Arith { depth: u32 },
    /// A here-document body.
    Heredoc(Pending),
}

/// A here-document announced by `<<WORD`, whose body starts at the next newline.
#[derive(Debug, Clone)]
struct Pending {
    delimiter: String,
    strip_tabs: bool,
    quoted: bool,
}

fn ch(toks: &[Tok], i: usize) -> Option<char> {
    match toks.get(i) {
        Some(Tok::Char(c)) => Some(*c),
        _ => None,
    }
}

/// Characters that end a word outside quotes.
fn is_meta(c: char) -> bool {
    c.is_whitespace() || ";&|()<>".contains(c)
}

/// The context of every hole, in order.
pub fn contexts(toks: &[Tok]) -> Vec<Result<Context, Unsafe>> {
    let mut out = Vec::new();
    let mut stack = vec![Frame::Cmd {
        nested: false,
        parens: 0,
    }];
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut escaped = false;
    let mut comment = false;
    let mut line_start = true;
    let mut i = 0;
    while i < toks.len() {
        let tok = toks[i];
        let prev = if i == 0 { None } else { Some(toks[i - 1]) };
        let after_dollar = prev == Some(Tok::Char('$')) && !escaped;
        // The command frame at the bottom is never popped.
        let Some(top) = stack.last_mut() else { break };
        match top {
            Frame::Heredoc(h) => {
                if line_start {
                    line_start = false;
                    let end = (i..toks.len())
                        .find(|&j| toks[j] == Tok::Char('\n'))
                        .unwrap_or(toks.len());
                    let line: Option<String> = toks[i..end]
                        .iter()
                        .map(|t| match t {
                            Tok::Char(c) => Some(*c),
                            Tok::Hole => None,
                        })
                        .collect();
                    if let Some(line) = line {
                        let line = if h.strip_tabs {
                            line.trim_start_matches('\t')
                        } else {
                            &line
                        };
                        if line == h.delimiter {
                            stack.pop();
                            i = end + 1;
                            line_start = true;
                            if let Some(next) = pending.pop_front() {
                                stack.push(Frame::Heredoc(next));
                            }
                            continue;
                        }
                    }
                }
                let quoted = h.quoted;
                match tok {
                    Tok::Hole => out.push(if quoted {
                        Err(Unsafe::QuotedHeredoc)
                    } else if escaped {
                        Err(Unsafe::AfterBackslash)
                    } else if after_dollar {
                        Err(Unsafe::AfterDollar)
                    } else {
                        Ok(Context::HeredocBody)
                    }),
                    Tok::Char('\n') => line_start = true,
                    Tok::Char(c) if !quoted && !escaped => {
                        i += expansion(toks, i, c, &mut stack, &mut escaped);
                        continue;
                    }
                    Tok::Char(_) => {}
                }
                escaped = false;
            }
            Frame::Cmd { nested, parens } => {
                if comment {
                    if tok == Tok::Char('\n') {
                        comment = false;
                    } else {
                        if tok == Tok::Hole {
                            out.push(Ok(Context::Bare));
                        }
                        i += 1;
                        continue;
                    }
                }
                if escaped {
                    escaped = false;
                    if tok == Tok::Hole {
                        out.push(Err(Unsafe::AfterBackslash));
                    }
                    i += 1;
                    continue;
                }
                let word_start = match prev {
                    None => true,
                    Some(Tok::Char(p)) => is_meta(p),
                    Some(Tok::Hole) => false,
                };
                match tok {
                    Tok::Hole => out.push(if after_dollar {
                        Err(Unsafe::AfterDollar)
                    } else {
                        Ok(Context::Bare)
                    }),
                    Tok::Char('#') if word_start => comment = true,
                    Tok::Char('\'') => stack.push(Frame::Sq),
                    Tok::Char('"') => stack.push(Frame::Dq),
                    Tok::Char('(') => *parens += 1,
                    Tok::Char(')') => {
                        if *parens == 0 {
                            if *nested {
                                stack.pop();
                            }
                        } else {
                            *parens -= 1;
                        }
                    }
                    Tok::Char('\n') => {
                        if let Some(next) = pending.pop_front() {
                            stack.push(Frame::Heredoc(next));
                            line_start = true;
                        }
                    }
                    Tok::Char('<') if ch(toks, i + 1) == Some('<') => {
                        if ch(toks, i + 2) == Some('<') {
                            // A here-string: its word is an ordinary word.
                            i += 3;
                            continue;
                        }
                        i = heredoc_word(toks, i + 2, &mut pending, &mut out);
                        continue;
                    }
                    Tok::Char('$') if ch(toks, i + 1) == Some('\'') => {
                        stack.push(Frame::AnsiC);
                        i += 2;
                        continue;
                    }
                    Tok::Char(c) => {
                        i += expansion(toks, i, c, &mut stack, &mut escaped);
                        continue;
                    }
                }
            }
            Frame::Dq => {
                if escaped {
                    escaped = false;
                    if tok == Tok::Hole {
                        out.push(Err(Unsafe::AfterBackslash));
                    }
                    i += 1;
                    continue;
                }
                match tok {
                    Tok::Hole => out.push(if after_dollar {
                        Err(Unsafe::AfterDollar)
                    } else {
                        Ok(Context::DoubleQuoted)
                    }),
                    Tok::Char('"') => {
                        stack.pop();
                    }
                    Tok::Char(c) => {
                        i += expansion(toks, i, c, &mut stack, &mut escaped);
                        continue;
                    }
                }
            }
            Frame::Sq => match tok {
                Tok::Hole => out.push(Err(Unsafe::SingleQuotes)),
                Tok::Char('\'') => {
                    stack.pop();
                }
                Tok::Char(_) => {}
            },
            Frame::AnsiC => {
                if escaping_quote(tok, '\'', &mut escaped, Unsafe::AnsiCQuotes, &mut out) {
                    stack.pop();
                }
            }
            Frame::Backtick => {
                if escaping_quote(tok, '`', &mut escaped, Unsafe::Backticks, &mut out) {
                    stack.pop();
                }
            }
            Frame::Param { depth } => {
                if escaped {
                    escaped = false;
                    if tok == Tok::Hole {
                        out.push(Err(Unsafe::ParamExpansion));
                    }
                } else {
                    match tok {
                        Tok::Hole => out.push(Err(Unsafe::ParamExpansion)),
                        Tok::Char('\\') => escaped = true,
                        Tok::Char('{') => *depth += 1,
                        Tok::Char('}') => {
                            if *depth == 0 {
                                stack.pop();
                            } else {
                                *depth -= 1;
                            }
                        }
                        Tok::Char(_) => {}
                    }
                }
            }
            Frame::Arith { depth } => match tok {
                Tok::Hole => out.push(Err(Unsafe::Arithmetic)),
                // A command substitution inside the arithmetic is a command context again.
                Tok::Char(c @ ('$' | '`')) => {
                    i += expansion(toks, i, c, &mut stack, &mut escaped);
                    continue;
                }
                Tok::Char('(') => *depth += 1,
                Tok::Char(')') => {
                    if *depth == 0 {
                        stack.pop();
                        if ch(toks, i + 1) == Some(')') {
                            i += 1;
                        }
                    } else {
                        *depth -= 1;
                    }
                }
                Tok::Char(_) => {}
            },
        }
        i += 1;
    }
    out
}

/// The characters that start an expansion wherever expansions happen (commands, `"…"`,
/// unquoted here-document bodies): `\`, `` ` ``, `$(`, `$((`, `${`. Returns how many tokens
/// were consumed (at least one).
/// One token inside a quote where a backslash escapes the next character (`$'…'`, backticks):
/// no value can be placed there, escaped or not. True when `tok` closes the quote.
fn escaping_quote(
    tok: Tok,
    close: char,
    escaped: &mut bool,
    unsafe_here: Unsafe,
    out: &mut Vec<Result<Context, Unsafe>>,
) -> bool {
    if *escaped {
        *escaped = false;
        if tok == Tok::Hole {
            out.push(Err(unsafe_here));
        }
        return false;
    }
    match tok {
        Tok::Hole => out.push(Err(unsafe_here)),
        Tok::Char('\\') => *escaped = true,
        Tok::Char(c) => return c == close,
    }
    false
}

fn expansion(toks: &[Tok], i: usize, c: char, stack: &mut Vec<Frame>, escaped: &mut bool) -> usize {
    match c {
        '\\' => {
            *escaped = true;
            1
        }
        '`' => {
            stack.push(Frame::Backtick);
            1
        }
        '$' if ch(toks, i + 1) == Some('(') && ch(toks, i + 2) == Some('(') => {
            stack.push(Frame::Arith { depth: 0 });
            3
        }
        '$' if ch(toks, i + 1) == Some('(') => {
            stack.push(Frame::Cmd {
                nested: true,
                parens: 0,
            });
            2
        }
        '$' if ch(toks, i + 1) == Some('{') => {
            stack.push(Frame::Param { depth: 0 });
            2
        }
        _ => 1,
    }
}

/// Read the delimiter word of `<<WORD` / `<<-WORD` starting at `i` (just after `<<`); queue the
/// here-document; return the index after the word.
fn heredoc_word(
    toks: &[Tok],
    mut i: usize,
    pending: &mut VecDeque<Pending>,
    out: &mut Vec<Result<Context, Unsafe>>,
) -> usize {
    let strip_tabs = ch(toks, i) == Some('-');
    if strip_tabs {
        i += 1;
    }
    while matches!(ch(toks, i), Some(' ' | '\t')) {
        i += 1;
    }
    let mut delimiter = String::new();
    let mut quoted = false;
    let mut quote: Option<char> = None;
    while i < toks.len() {
        match toks[i] {
            Tok::Hole => out.push(Err(Unsafe::HeredocDelimiter)),
            Tok::Char(c) => match quote {
                Some(q) if c == q => quote = None,
                None if c == '\'' || c == '"' => {
                    quoted = true;
                    quote = Some(c);
                }
                None if c == '\\' => {
                    quoted = true;
                    if let Some(n) = ch(toks, i + 1) {
                        delimiter.push(n);
                        i += 1;
                    }
                }
                None if is_meta(c) => break,
                _ => delimiter.push(c),
            },
        }
        i += 1;
    }
    if !delimiter.is_empty() {
        pending.push_back(Pending {
            delimiter,
            strip_tabs,
            quoted,
        });
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `@` marks a hole.
    fn toks(s: &str) -> Vec<Tok> {
        s.chars()
            .map(|c| if c == '@' { Tok::Hole } else { Tok::Char(c) })
            .collect()
    }

    fn of(s: &str) -> Vec<Result<Context, Unsafe>> {
        contexts(&toks(s))
    }

    #[test]
    fn every_quoting_context() {
        use Context::{Bare, DoubleQuoted, HeredocBody};
        let cases: &[(&str, Result<Context, Unsafe>)] = &[
            ("echo @", Ok(Bare)),
            ("X=@ cmd", Ok(Bare)),
            ("echo \"a @ b\"", Ok(DoubleQuoted)),
            ("echo 'a @ b'", Err(Unsafe::SingleQuotes)),
            ("echo $'a @'", Err(Unsafe::AnsiCQuotes)),
            ("echo \"it's @\"", Ok(DoubleQuoted)),
            ("echo 'say \"hi\"' @", Ok(Bare)),
            ("echo `echo @`", Err(Unsafe::Backticks)),
            ("echo $(echo @)", Ok(Bare)),
            ("echo \"$(echo @)\"", Ok(Bare)),
            ("echo \"$(echo \"@\")\"", Ok(DoubleQuoted)),
            ("echo $(echo (a)) @", Ok(Bare)),
            ("echo \"$(echo x)\" '@'", Err(Unsafe::SingleQuotes)),
            ("echo ${x:-@}", Err(Unsafe::ParamExpansion)),
            ("echo $((1 + @))", Err(Unsafe::Arithmetic)),
            ("echo $((1 + (2))) @", Ok(Bare)),
            ("m=$(( $(printf %s @ | sed s/d/*86400/) ))", Ok(Bare)),
            ("m=$(( $(printf %s 1) + @ ))", Err(Unsafe::Arithmetic)),
            ("echo \\@", Err(Unsafe::AfterBackslash)),
            ("echo \"\\@\"", Err(Unsafe::AfterBackslash)),
            ("echo $@", Err(Unsafe::AfterDollar)),
            ("echo \\\\@", Ok(Bare)),
            ("case @ in x) ;; esac", Ok(Bare)),
            ("# a comment @", Ok(Bare)),
            ("echo a#@", Ok(Bare)),
            ("cat <<EOF\nhello @\nEOF\n", Ok(HeredocBody)),
            ("cat <<'EOF'\nhello @\nEOF\n", Err(Unsafe::QuotedHeredoc)),
            ("cat <<\"EOF\"\nhello @\nEOF\n", Err(Unsafe::QuotedHeredoc)),
            ("cat <<\\EOF\nhello @\nEOF\n", Err(Unsafe::QuotedHeredoc)),
            ("cat <<-EOF\n\thello\n\tEOF\necho @", Ok(Bare)),
            ("cat <<'EOF'\nx\nEOF\necho @", Ok(Bare)),
            ("cat <<EOF\n'@'\nEOF\n", Ok(HeredocBody)),
            ("cat <<EOF\n$(echo @)\nEOF\n", Ok(Bare)),
            ("cat <<EOF\n`@`\nEOF\n", Err(Unsafe::Backticks)),
            ("cat <<@\nx\n", Err(Unsafe::HeredocDelimiter)),
            ("cat <<<@", Ok(Bare)),
            ("cat <<EOF; echo \"@\"\nEOF\n", Ok(DoubleQuoted)),
        ];
        for (text, want) in cases {
            assert_eq!(of(text), vec![*want], "{text:?}");
        }
    }

    #[test]
    fn two_heredocs_on_one_line_end_in_order() {
        assert_eq!(
            of("cat <<A <<'B'\n@\nA\n@\nB\necho @"),
            vec![
                Ok(Context::HeredocBody),
                Err(Unsafe::QuotedHeredoc),
                Ok(Context::Bare)
            ]
        );
    }

    /// A model of the simplest shell words: a sequence of bare, `"…"`, and `'…'` segments
    /// over characters that never start an expansion.
    #[derive(Debug, Clone)]
    enum Seg {
        Bare(String),
        Dq(String),
        Sq(String),
    }

    fn seg() -> impl Strategy<Value = (Seg, bool)> {
        let plain = "[a-z =;|&.,:/-]{0,6}";
        (
            prop_oneof![
                plain.prop_map(Seg::Bare),
                plain.prop_map(Seg::Dq),
                "[a-z \"$`\\\\=;|&.,:/-]{0,6}".prop_map(Seg::Sq),
            ],
            any::<bool>(),
        )
    }

    proptest! {
        /// Every hole gets the context of the segment it sits in, whatever comes around it.
        #[test]
        fn holes_get_the_context_of_their_segment(segs in proptest::collection::vec(seg(), 0..8)) {
            let mut text = Vec::new();
            let mut want = Vec::new();
            for (s, hole) in &segs {
                let (open, body, ctx) = match s {
                    Seg::Bare(b) => ("", b, Ok(Context::Bare)),
                    Seg::Dq(b) => ("\"", b, Ok(Context::DoubleQuoted)),
                    Seg::Sq(b) => ("'", b, Err(Unsafe::SingleQuotes)),
                };
                text.extend(open.chars().map(Tok::Char));
                // A space first, so a hole never follows `$` or `\` in the model.
                text.push(Tok::Char(' '));
                text.extend(body.chars().map(Tok::Char));
                if *hole {
                    text.push(Tok::Hole);
                    want.push(ctx);
                }
                text.extend(open.chars().map(Tok::Char));
            }
            prop_assert_eq!(contexts(&text), want);
        }

        /// Any text at all: no panic, one answer per hole.
        #[test]
        fn one_answer_per_hole(s in "[a-z@ '\"`$(){}<>\\\\\n#;-]{0,40}") {
            let t = toks(&s);
            let holes = t.iter().filter(|t| **t == Tok::Hole).count();
            prop_assert_eq!(contexts(&t).len(), holes);
        }
    }
}
