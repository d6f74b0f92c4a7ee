//! Variable substitution and quote removal, as BuildKit's shell lexer
//! (`frontend/dockerfile/shell/lex.go`) does it for the instructions that substitute.
//!
//! `$V`, `${V}`, `${V:-w}`, `${V-w}`, `${V:+w}`, `${V+w}`, `${V:?w}`, `${V?w}`, `${V#p}`, `${V##p}`,
//! `${V%p}`, `${V%%p}`, `${V/p/r}`, `${V//p/r}`; single quotes are literal, double quotes
//! substitute, the escape character (`\` or the `# escape=` one) escapes the next character.

/// The variables a word is substituted with: later entries win.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Env(pub Vec<(String, String)>);

impl Env {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Set `name`, replacing an earlier value in place (so the order stays the order of first
    /// definition, as BuildKit's env list keeps it).
    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(e) = self.0.iter_mut().find(|(k, _)| k == name) {
            e.1 = value.to_string();
        } else {
            self.0.push((name.to_string(), value.to_string()));
        }
    }
}

/// Substitute variables in `word` and remove its quotes and escapes (BuildKit's `ProcessWord`).
pub fn process_word(word: &str, env: &Env, escape: char) -> Result<String, String> {
    let mut lx = Lexer::new(word, env, escape);
    let (s, _) = lx.process_until(None, false)?;
    Ok(s)
}

/// Like [`process_word`], then split into words at unquoted whitespace (BuildKit's
/// `ProcessWords`; whitespace from a substituted value splits too).
pub fn process_words(word: &str, env: &Env, escape: char) -> Result<Vec<String>, String> {
    let mut lx = Lexer::new(word, env, escape);
    let (_, words) = lx.process_until(None, false)?;
    Ok(words)
}

struct Lexer<'a> {
    chars: Vec<char>,
    pos: usize,
    env: &'a Env,
    escape: char,
    raw_escapes: bool,
}

#[derive(Default)]
struct Words {
    buf: String,
    words: Vec<String>,
    in_word: bool,
}

impl Words {
    fn add_char(&mut self, ch: char) {
        if ch.is_whitespace() {
            if self.in_word && !self.buf.is_empty() {
                self.words.push(std::mem::take(&mut self.buf));
                self.in_word = false;
            }
        } else {
            self.add_raw_char(ch);
        }
    }
    fn add_raw_char(&mut self, ch: char) {
        self.buf.push(ch);
        self.in_word = true;
    }
    fn add_string(&mut self, s: &str) {
        for c in s.chars() {
            self.add_char(c);
        }
    }
    fn add_raw_string(&mut self, s: &str) {
        self.buf.push_str(s);
        self.in_word = true;
    }
    fn finish(mut self) -> Vec<String> {
        if !self.buf.is_empty() {
            self.words.push(std::mem::take(&mut self.buf));
        }
        self.words
    }
}

impl<'a> Lexer<'a> {
    fn new(word: &str, env: &'a Env, escape: char) -> Lexer<'a> {
        Lexer {
            chars: word.chars().collect(),
            pos: 0,
            env,
            escape,
            raw_escapes: false,
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Process until `stop` (consumed) or the end; `raw_escapes` keeps escape characters (for
    /// patterns, which handle their own escapes).
    fn process_until(
        &mut self,
        stop: Option<char>,
        raw_escapes: bool,
    ) -> Result<(String, Vec<String>), String> {
        let saved = self.raw_escapes;
        self.raw_escapes = raw_escapes;
        let r = self.process_until_inner(stop);
        self.raw_escapes = saved;
        r
    }

    fn process_until_inner(&mut self, stop: Option<char>) -> Result<(String, Vec<String>), String> {
        let mut result = String::new();
        let mut words = Words::default();
        while let Some(ch) = self.peek() {
            if Some(ch) == stop {
                self.next();
                return Ok((result, words.finish()));
            }
            match ch {
                '$' => {
                    let v = self.dollar()?;
                    result.push_str(&v);
                    words.add_string(&v);
                }
                '\'' => {
                    let v = self.single_quote()?;
                    result.push_str(&v);
                    words.add_raw_string(&v);
                }
                '"' => {
                    let v = self.double_quote()?;
                    result.push_str(&v);
                    words.add_raw_string(&v);
                }
                _ => {
                    self.next();
                    if ch == self.escape {
                        if self.raw_escapes {
                            words.add_raw_char(ch);
                            result.push(ch);
                        }
                        // The escape character escapes the next one, except at the end.
                        let Some(c) = self.next() else { break };
                        words.add_raw_char(c);
                        result.push(c);
                    } else {
                        words.add_char(ch);
                        result.push(ch);
                    }
                }
            }
        }
        if let Some(stop) = stop {
            return Err(format!(
                "unexpected end of text while looking for a matching `{stop}`"
            ));
        }
        Ok((result, words.finish()))
    }

    fn single_quote(&mut self) -> Result<String, String> {
        self.next();
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err("unterminated single quote".into()),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, String> {
        self.next();
        let mut out = String::new();
        loop {
            match self.peek() {
                None => return Err("unterminated double quote".into()),
                Some('"') => {
                    self.next();
                    return Ok(out);
                }
                Some('$') => out.push_str(&self.dollar()?),
                Some(_) => {
                    let Some(mut ch) = self.next() else { continue };
                    if ch == self.escape {
                        if self.raw_escapes {
                            out.push(ch);
                        }
                        match self.peek() {
                            None => continue,
                            Some(c) if c == '"' || c == '$' || c == self.escape => {
                                self.next();
                                ch = c;
                            }
                            Some(_) => {}
                        }
                    }
                    out.push(ch);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        while let Some(ch) = self.peek() {
            if name.is_empty() && ch.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.next();
                    name.push(d);
                }
                return name;
            }
            if name.is_empty() && matches!(ch, '@' | '*' | '#' | '?' | '-' | '$' | '!' | '0') {
                self.next();
                return ch.to_string();
            }
            if !ch.is_alphanumeric() && ch != '_' {
                break;
            }
            self.next();
            name.push(ch);
        }
        name
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.next();
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.env.get(&name).unwrap_or_default().to_string());
        }
        self.next();
        match self.peek() {
            None => return Err("missing `}` in a `${…}` substitution".into()),
            Some('{' | '}' | ':') => return Err("bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let Some(mut ch) = self.next() else {
            return Err("missing `}` in a `${…}` substitution".into());
        };
        let mut modifier = ch.to_string();
        let mut null_is_unset = false;
        match ch {
            '}' => return Ok(self.env.get(&name).unwrap_or_default().to_string()),
            '/' => return self.replace(&name),
            ':' => {
                null_is_unset = true;
                match self.next() {
                    Some(c) => {
                        ch = c;
                        modifier.push(c);
                    }
                    None => return Err("missing `}` in a `${…}` substitution".into()),
                }
            }
            '+' | '-' | '?' | '#' | '%' => {}
            _ => return Err(format!("unsupported modifier `{modifier}` in substitution")),
        }
        let pattern = ch == '#' || ch == '%';
        if null_is_unset && pattern {
            return Err(format!("unsupported modifier `{modifier}` in substitution"));
        }
        if !matches!(ch, '+' | '-' | '?' | '#' | '%') {
            return Err(format!("unsupported modifier `{modifier}` in substitution"));
        }
        let word = match self.process_until(Some('}'), pattern) {
            Ok((w, _)) => w,
            Err(e) if self.peek().is_none() => {
                let _ = e;
                return Err("missing `}` in a `${…}` substitution".into());
            }
            Err(e) => return Err(e),
        };
        let value = self.env.get(&name);
        let empty = |v: Option<&str>| v.is_none() || (null_is_unset && v == Some(""));
        match ch {
            '-' => Ok(if empty(value) {
                word
            } else {
                value.unwrap_or_default().to_string()
            }),
            '+' => Ok(if empty(value) { String::new() } else { word }),
            '?' => match value {
                None => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be unset"
                    } else {
                        &word
                    }
                )),
                Some("") if null_is_unset => Err(format!(
                    "{name}: {}",
                    if word.is_empty() {
                        "is not allowed to be empty"
                    } else {
                        &word
                    }
                )),
                Some(v) => Ok(v.to_string()),
            },
            _ => {
                let value = value.unwrap_or_default();
                let (greedy, pat) = match word.strip_prefix(ch) {
                    Some(rest) => (true, rest),
                    None => (false, word.as_str()),
                };
                let pat = Pattern::parse(pat)?;
                Ok(if ch == '#' {
                    pat.trim_prefix(value, greedy)
                } else {
                    pat.trim_suffix(value, greedy)
                })
            }
        }
    }

    fn replace(&mut self, name: &str) -> Result<String, String> {
        let all = self.peek() == Some('/');
        if all {
            self.next();
        }
        let pattern = match self.process_until(Some('/'), true) {
            Ok((p, _)) => p,
            Err(_) if self.peek().is_none() => {
                return Err("missing `/` in a `${…/…/…}` substitution".into());
            }
            Err(e) => return Err(e),
        };
        let replacement = match self.process_until(Some('}'), true) {
            Ok((r, _)) => r,
            Err(_) if self.peek().is_none() => {
                return Err("missing `}` in a `${…}` substitution".into());
            }
            Err(e) => return Err(e),
        };
        let value = self.env.get(name).unwrap_or_default();
        let pat = Pattern::parse(&pattern)?;
        Ok(pat.replace(value, &replacement, all))
    }
}

/// A shell pattern of `${V#p}` and friends: `*`, `?`, literal characters (`\` escapes).
#[derive(Debug)]
struct Pattern(Vec<Tok>);

#[derive(Debug, Clone, Copy, PartialEq)]
enum Tok {
    Star,
    Any,
    Lit(char),
}

impl Pattern {
    fn parse(p: &str) -> Result<Pattern, String> {
        let mut toks = Vec::new();
        let mut it = p.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                '*' => toks.push(Tok::Star),
                '?' => toks.push(Tok::Any),
                '\\' => match it.peek().copied() {
                    // `}` and `/` are escaped only to survive `${…}`; the escape is not part
                    // of the pattern.
                    Some('}' | '/') => {}
                    Some(n @ ('*' | '?' | '\\')) => {
                        it.next();
                        toks.push(Tok::Lit(n));
                    }
                    Some(n) => return Err(format!("invalid escape `\\{n}` in pattern `{p}`")),
                    None => return Err(format!("invalid escape `\\` in pattern `{p}`")),
                },
                c => toks.push(Tok::Lit(c)),
            }
        }
        Ok(Pattern(toks))
    }

    fn matches(&self, s: &[char]) -> bool {
        let (p, n, m) = (&self.0, self.0.len(), s.len());
        // dp[i][j]: p[i..] matches s[j..].
        let mut dp = vec![vec![false; m + 1]; n + 1];
        dp[n][m] = true;
        for i in (0..n).rev() {
            for j in (0..=m).rev() {
                dp[i][j] = match p[i] {
                    Tok::Star => dp[i + 1][j] || (j < m && dp[i][j + 1]),
                    Tok::Any => j < m && dp[i + 1][j + 1],
                    Tok::Lit(c) => j < m && s[j] == c && dp[i + 1][j + 1],
                };
            }
        }
        dp[0][0]
    }

    fn trim_prefix(&self, value: &str, greedy: bool) -> String {
        let v: Vec<char> = value.chars().collect();
        let mut lens: Vec<usize> = (0..=v.len()).collect();
        if greedy {
            lens.reverse();
        }
        match lens.into_iter().find(|&n| self.matches(&v[..n])) {
            Some(n) => v[n..].iter().collect(),
            None => value.to_string(),
        }
    }

    fn trim_suffix(&self, value: &str, greedy: bool) -> String {
        let v: Vec<char> = value.chars().collect();
        let mut starts: Vec<usize> = (0..=v.len()).rev().collect();
        if greedy {
            starts.reverse();
        }
        match starts.into_iter().find(|&i| self.matches(&v[i..])) {
            Some(i) => v[..i].iter().collect(),
            None => value.to_string(),
        }
    }

    /// Replace the leftmost-longest match (every non-overlapping one with `all`).
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let v: Vec<char> = value.chars().collect();
        let mut out = String::new();
        let mut i = 0;
        let mut replaced = false;
        while i <= v.len() {
            if replaced && !all {
                break;
            }
            let found = (i..=v.len()).rev().find(|&e| self.matches(&v[i..e]));
            match found {
                Some(e) => {
                    out.push_str(replacement);
                    replaced = true;
                    if e > i {
                        i = e;
                    } else {
                        if i < v.len() {
                            out.push(v[i]);
                        }
                        i += 1;
                    }
                }
                None => {
                    if i < v.len() {
                        out.push(v[i]);
                    }
                    i += 1;
                }
            }
        }
        if i < v.len() {
            out.extend(&v[i..]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_trim_and_replace() {
        let p = Pattern::parse("*/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.trim_prefix("a/b/c", false), "b/c");
        assert_eq!(p.trim_prefix("a/b/c", true), "c");
        let p = Pattern::parse("/*").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.trim_suffix("a/b/c", false), "a/b");
        assert_eq!(p.trim_suffix("a/b/c", true), "a");
        let p = Pattern::parse("o").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.replace("foo", "0", false), "f0o");
        assert_eq!(p.replace("foo", "0", true), "f00");
    }
}
