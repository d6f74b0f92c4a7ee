//! From text to instructions: parser directives, comments, line continuations (BuildKit's
//! `parser.go`), and the word splitters of `line_parsers.go` and `split_command.go`, every piece
//! keeping where it came from in the file.

use std::ops::Range;

use recast_spec::Diagnostic;

use crate::source::Source;

/// One instruction's text, joined from its physical lines, with a map back to file offsets.
#[derive(Debug)]
pub(crate) struct Logical {
    pub text: String,
    /// File offset of every byte of `text`.
    map: Vec<usize>,
}

impl Logical {
    fn push(&mut self, piece: &str, file_offset: usize) {
        self.text.push_str(piece);
        self.map.extend((0..piece.len()).map(|i| file_offset + i));
    }

    /// File byte range of `text[r]`.
    pub fn span(&self, r: Range<usize>) -> Range<usize> {
        let at = |i: usize| {
            self.map
                .get(i)
                .copied()
                .unwrap_or_else(|| self.map.last().map_or(0, |&o| o + 1))
        };
        let start = at(r.start);
        let end = if r.end > r.start {
            at(r.end - 1) + 1
        } else {
            start
        };
        start..end
    }
}

/// The file split into instructions, and the escape character its directive chose.
pub(crate) struct Lines {
    pub instructions: Vec<Logical>,
    pub escape: char,
    pub errors: Vec<Diagnostic>,
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Remove a trailing escape character (and the blanks after it) that continues the line:
/// BuildKit's `([^\\])\\[ \t]*$|^\\[ \t]*$`.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let t = line.trim_end_matches([' ', '\t']);
    if let Some(before) = t.strip_suffix(escape)
        && !before.ends_with(escape)
    {
        return (before, false);
    }
    (line, true)
}

/// A parser directive (`# name=value`) as BuildKit recognises it, or None.
fn directive(line: &str) -> Option<(String, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let mut chars = rest.char_indices();
    let (_, first) = chars.next()?;
    if !first.is_ascii_alphabetic() {
        return None;
    }
    let end = rest
        .char_indices()
        .find(|&(_, c)| !c.is_ascii_alphanumeric())
        .map_or(rest.len(), |(i, _)| i);
    let name = &rest[..end];
    let value = rest[end..].trim_start().strip_prefix('=')?.trim();
    if value.is_empty() {
        return None;
    }
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "syntax" | "escape" | "check").then_some((name, value))
}

pub(crate) fn split(src: &Source) -> Lines {
    let text = src.text;
    let mut physical: Vec<(usize, &str)> = Vec::new();
    let mut off = 0;
    for raw in text.split_inclusive('\n') {
        let line = raw.strip_suffix('\n').unwrap_or(raw);
        let line = line.strip_suffix('\r').unwrap_or(line);
        physical.push((off, line));
        off += raw.len();
    }
    if let Some(first) = physical.first_mut()
        && let Some(rest) = first.1.strip_prefix('\u{feff}')
    {
        *first = (first.0 + '\u{feff}'.len_utf8(), rest);
    }

    let mut out = Lines {
        instructions: Vec::new(),
        escape: '\\',
        errors: Vec::new(),
    };
    let mut directives_done = false;
    let mut seen: Vec<String> = Vec::new();
    let mut i = 0;
    while i < physical.len() {
        let (line_off, raw) = physical[i];
        i += 1;
        let trimmed = raw.trim_start();
        let off = line_off + (raw.len() - trimmed.len());
        if !directives_done {
            match directive(trimmed) {
                None => directives_done = true,
                Some((name, value)) => {
                    let span = off..off + trimmed.len();
                    if seen.contains(&name) {
                        out.errors.push(src.diag(
                            span,
                            format!("only one `{name}` parser directive can be used"),
                            None,
                        ));
                    } else if name == "escape" {
                        match value {
                            "\\" => out.escape = '\\',
                            "`" => out.escape = '`',
                            _ => out.errors.push(src.diag(
                                span,
                                format!("invalid escape character `{value}`"),
                                Some("the escape character is \\ (the default) or ` (a backtick)".into()),
                            )),
                        }
                    }
                    seen.push(name);
                    continue;
                }
            }
        }
        if is_comment(trimmed) {
            continue;
        }
        let (first, mut end_of_line) = trim_continuation(trimmed, out.escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut logical = Logical {
            text: String::new(),
            map: Vec::new(),
        };
        logical.push(first, off);
        while !end_of_line && i < physical.len() {
            let (line_off, raw) = physical[i];
            i += 1;
            if is_comment(raw) || raw.trim().is_empty() {
                continue;
            }
            let (piece, eol) = trim_continuation(raw, out.escape);
            end_of_line = eol;
            logical.push(piece, line_off);
        }
        // Heredocs are not supported (the parser says so); skip their bodies so they do not
        // read as instructions.
        for doc in heredocs_of(&logical.text, out.escape) {
            while i < physical.len() {
                let (_, raw) = physical[i];
                i += 1;
                let candidate = if doc.chomp {
                    raw.trim_start_matches('\t')
                } else {
                    raw
                };
                if candidate == doc.name {
                    break;
                }
            }
        }
        out.instructions.push(logical);
    }
    out
}

/// A word of an instruction, with its byte range in the instruction's text.
#[derive(Debug, Clone)]
pub(crate) struct Word {
    pub text: String,
    pub range: Range<usize>,
}

/// Whitespace in BuildKit's `[\t\v\f\r ]+` sense.
fn is_blank(c: char) -> bool {
    matches!(c, '\t' | '\u{b}' | '\u{c}' | '\r' | ' ')
}

/// The instruction's keyword, its `--flags`, and the rest (trimmed).
pub(crate) struct Command {
    pub keyword: Word,
    pub flags: Vec<Word>,
    pub args: Range<usize>,
}

pub(crate) fn split_command(text: &str, escape: char) -> Option<Command> {
    let start = text.len() - text.trim_start().len();
    let end = text.trim_end().len();
    if start >= end {
        return None;
    }
    let kw_end = text[start..end]
        .char_indices()
        .find(|&(_, c)| is_blank(c) || c.is_whitespace())
        .map_or(end, |(i, _)| start + i);
    let keyword = Word {
        text: text[start..kw_end].to_string(),
        range: start..kw_end,
    };
    let (flags, args_start) = extract_flags(text, kw_end, end, escape);
    let args_start = args_start.min(end);
    let rest = &text[args_start..end];
    let args_start = args_start + (rest.len() - rest.trim_start().len());
    Some(Command {
        keyword,
        flags,
        args: args_start..end,
    })
}

/// BuildKit's `extractBuilderFlags`: the leading words starting with `--` (quotes and escapes
/// removed), and where the rest begins.
fn extract_flags(text: &str, from: usize, end: usize, escape: char) -> (Vec<Word>, usize) {
    let mut flags = Vec::new();
    let chars: Vec<(usize, char)> = text[from..end]
        .char_indices()
        .map(|(i, c)| (from + i, c))
        .collect();
    let mut k = 0;
    loop {
        while k < chars.len() && chars[k].1.is_whitespace() {
            k += 1;
        }
        if k >= chars.len() {
            return (flags, end);
        }
        let word_start = chars[k].0;
        if !(chars[k].1 == '-' && chars.get(k + 1).is_some_and(|c| c.1 == '-')) {
            return (flags, word_start);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while k < chars.len() {
            let c = chars[k].1;
            match quote {
                None if c.is_whitespace() => break,
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == escape => {
                    if let Some(&(_, n)) = chars.get(k + 1) {
                        word.push(n);
                        k += 1;
                    }
                }
                _ => word.push(c),
            }
            k += 1;
        }
        let word_end = chars.get(k).map_or(end, |c| c.0);
        if word == "--" {
            return (flags, word_end);
        }
        flags.push(Word {
            text: word,
            range: word_start..word_end,
        });
    }
}

/// Split at runs of blanks (BuildKit's `parseStringsWhitespaceDelimited`).
pub(crate) fn blank_split(text: &str, r: Range<usize>) -> Vec<Word> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    for (i, c) in text[r.clone()].char_indices() {
        let i = r.start + i;
        if is_blank(c) {
            if let Some(s) = start.take() {
                out.push(Word {
                    text: text[s..i].to_string(),
                    range: s..i,
                });
            }
        } else if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(s) = start {
        out.push(Word {
            text: text[s..r.end].to_string(),
            range: s..r.end,
        });
    }
    out
}

/// BuildKit's `parseWords`: words at unquoted whitespace, quotes and escapes kept (they are
/// removed later, by substitution).
pub(crate) fn parse_words(text: &str, r: Range<usize>, escape: char) -> Vec<Word> {
    let chars: Vec<(usize, char)> = text[r.clone()]
        .char_indices()
        .map(|(i, c)| (r.start + i, c))
        .collect();
    let mut words = Vec::new();
    let mut k = 0;
    while k < chars.len() {
        if chars[k].1.is_whitespace() {
            k += 1;
            continue;
        }
        let start = chars[k].0;
        let mut word = String::new();
        let mut quote: Option<char> = None;
        while k < chars.len() {
            let c = chars[k].1;
            match quote {
                None if c.is_whitespace() => break,
                None => {
                    if c == '\'' || c == '"' {
                        quote = Some(c);
                    }
                    if c == escape {
                        if k + 1 == chars.len() {
                            k += 1;
                            continue;
                        }
                        word.push(c);
                        k += 1;
                    }
                    word.push(chars[k].1);
                }
                Some(q) => {
                    if c == q {
                        quote = None;
                    }
                    if c == escape && q != '\'' {
                        if k + 1 == chars.len() {
                            quote = None;
                            k += 1;
                            continue;
                        }
                        word.push(c);
                        k += 1;
                    }
                    word.push(chars[k].1);
                }
            }
            k += 1;
        }
        let end = chars.get(k).map_or(r.end, |c| c.0);
        words.push(Word {
            text: word,
            range: start..end,
        });
    }
    words
}

/// A heredoc in a shell-form line: where its `<<` is, its delimiter, and whether it is `<<-`.
pub(crate) struct Heredoc {
    pub at: usize,
    pub name: String,
    pub chomp: bool,
}

/// The heredocs (`<<EOF`, `<<-EOF`, `2<<"EOF"`) of a shell-form line: unquoted words that are
/// digits, `<<`, then a delimiter.
pub(crate) fn heredocs(text: &str, r: Range<usize>, escape: char) -> Vec<Heredoc> {
    let s = &text[r.clone()];
    let chars: Vec<(usize, char)> = s.char_indices().collect();
    let mut out = Vec::new();
    let mut quote: Option<char> = None;
    let mut word_start = true;
    let mut k = 0;
    while k < chars.len() {
        let c = chars[k].1;
        match quote {
            Some(q) => {
                if c == escape && q == '"' {
                    k += 1;
                } else if c == q {
                    quote = None;
                }
                word_start = false;
            }
            None if c.is_whitespace() => word_start = true,
            None if c == escape => {
                k += 1;
                word_start = false;
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                word_start = false;
            }
            None if word_start => {
                word_start = false;
                let mut j = k;
                while j < chars.len() && chars[j].1.is_ascii_digit() {
                    j += 1;
                }
                if chars.get(j).is_some_and(|c| c.1 == '<')
                    && chars.get(j + 1).is_some_and(|c| c.1 == '<')
                {
                    let mut m = j + 2;
                    let chomp = chars.get(m).is_some_and(|c| c.1 == '-');
                    if chomp {
                        m += 1;
                    }
                    while chars.get(m).is_some_and(|c| c.1 == ' ' || c.1 == '\t') {
                        m += 1;
                    }
                    if chars
                        .get(m)
                        .is_some_and(|c| c.1 != '<' && !c.1.is_whitespace())
                    {
                        let mut name = String::new();
                        while let Some(&(_, c)) = chars.get(m) {
                            if c.is_whitespace() {
                                break;
                            }
                            if c != '"' && c != '\'' {
                                name.push(c);
                            }
                            m += 1;
                        }
                        out.push(Heredoc {
                            at: r.start + chars[j].0,
                            name,
                            chomp,
                        });
                        k = m;
                        continue;
                    }
                }
            }
            None => word_start = false,
        }
        k += 1;
    }
    out
}

/// Whether `logical` may carry heredocs (shell-form `RUN`, `COPY`, `ADD`), and which.
fn heredocs_of(logical: &str, escape: char) -> Vec<Heredoc> {
    let Some(cmd) = split_command(logical, escape) else {
        return Vec::new();
    };
    let kw = cmd.keyword.text.to_ascii_uppercase();
    if !matches!(kw.as_str(), "RUN" | "COPY" | "ADD") || !logical.contains("<<") {
        return Vec::new();
    }
    let args = &logical[cmd.args.clone()];
    if args.trim_start().starts_with('[')
        && serde_json::from_str::<Vec<serde_json::Value>>(args.trim_start()).is_ok()
    {
        return Vec::new();
    }
    heredocs(logical, cmd.args, escape)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn texts(w: &[Word]) -> Vec<&str> {
        w.iter().map(|w| w.text.as_str()).collect()
    }

    #[test]
    fn continuations_comments_and_directives() {
        let text = "# escape=`\n\nRUN a `\n  # inside\n\n  b\nCOPY x``\n";
        let src = Source::new(Path::new("Dockerfile"), text);
        let lines = split(&src);
        assert!(lines.errors.is_empty());
        assert_eq!(lines.escape, '`');
        let got: Vec<&str> = lines.instructions.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(got, ["RUN a   b", "COPY x``"]);
        let l = &lines.instructions[0];
        assert_eq!(src.line_col(l.span(8..9).start), (6, 3));
    }

    #[test]
    fn words_keep_quotes_and_flags_lose_them() {
        let t = r#"a="b c" d=e\ f 'g h'"#;
        assert_eq!(
            texts(&parse_words(t, 0..t.len(), '\\')),
            [r#"a="b c""#, r"d=e\ f", "'g h'"]
        );
        let t = r#"COPY --chown="a b" --link -- --x y"#;
        let c = split_command(t, '\\').unwrap_or_else(|| panic!("no command"));
        assert_eq!(texts(&c.flags), ["--chown=a b", "--link"]);
        assert_eq!(&t[c.args], "--x y");
    }

    #[test]
    fn heredocs_are_found_outside_quotes_only() {
        let t = "cat <<EOF && x 2<<-\"END\"";
        let found: Vec<(usize, String, bool)> = heredocs(t, 0..t.len(), '\\')
            .into_iter()
            .map(|h| (h.at, h.name, h.chomp))
            .collect();
        assert_eq!(found, [(4, "EOF".into(), false), (16, "END".into(), true)]);
        let t = "echo '<<EOF' \"a <<b\" <<< x a<<b";
        assert!(heredocs(t, 0..t.len(), '\\').is_empty());
    }
}
