//! A file's text, able to turn byte offsets into located diagnostics (the same `Diagnostic` the
//! spec language uses, so both render identically; whole-file diagnostics and did-you-mean
//! hints are the spec's own).

use std::ops::Range;
use std::path::{Path, PathBuf};

use recast_spec::Diagnostic;
pub(crate) use recast_spec::{file_diag, suggest};

#[derive(Debug)]
pub(crate) struct Source<'a> {
    pub path: PathBuf,
    pub text: &'a str,
    line_starts: Vec<usize>,
}

impl<'a> Source<'a> {
    pub fn new(path: &Path, text: &'a str) -> Source<'a> {
        // A byte-order mark is not part of the first line anyone sees.
        let mut line_starts = vec![if text.starts_with('\u{feff}') { 3 } else { 0 }];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path: path.to_path_buf(),
            text,
            line_starts,
        }
    }

    /// 1-based line and character column of a byte offset.
    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let start = floor_char_boundary(self.text, offset.min(self.text.len()));
        let start = start.max(self.line_starts[0]);
        let idx = self.line_index(start);
        let column = self.text[self.line_starts[idx]..start].chars().count() + 1;
        (idx + 1, column)
    }

    fn line_index(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i,
            Err(i) => i - 1,
        }
    }

    /// A diagnostic pointing at `span` (byte offsets into the file); the caret is clamped to the
    /// span's first line.
    pub fn diag(&self, span: Range<usize>, message: String, hint: Option<String>) -> Diagnostic {
        let start = floor_char_boundary(self.text, span.start.min(self.text.len()));
        let start = start.max(self.line_starts[0]);
        let idx = self.line_index(start);
        let line_start = self.line_starts[idx];
        let line_end = self
            .line_starts
            .get(idx + 1)
            .map_or(self.text.len(), |&e| e - 1);
        let raw_line = &self.text[line_start..line_end];
        let source_line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
        let visible_end = line_start + source_line.len();
        let start = start.min(visible_end);
        let column = self.text[line_start..start].chars().count() + 1;
        let end = floor_char_boundary(self.text, span.end.clamp(start, visible_end));
        let width = self.text[start..end].chars().count();
        Diagnostic {
            file: self.path.clone(),
            line: idx + 1,
            column,
            message,
            hint,
            source_line: source_line.to_string(),
            width,
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_count_characters_and_carets_stay_on_the_line() {
        let s = Source::new(Path::new("Dockerfile"), "FROM é x\r\nRUN a\n");
        let d = s.diag(8..100, "m".into(), None);
        assert_eq!((d.line, d.column, d.width), (1, 8, 1));
        assert_eq!(d.source_line, "FROM é x");
        assert_eq!(s.line_col(11), (2, 1));
        assert_eq!(suggest("buidler", ["builder", "app"]), Some("builder"));
    }
}
