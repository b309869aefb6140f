//! Class names: from the model's `names` metadata, which Ultralytics and YOLOv5 exports write as
//! Python's `str()` of a dict (`{0: 'person', 1: "cat's toy"}`; old YOLOv5 ones a list), or
//! from a labels file of one name per line. Python is not at hand to `eval` it, so this is a
//! small parser for exactly what `str()` writes: integer keys, '…' or "…" strings with
//! backslash escapes.

use std::path::Path;

use thiserror::Error;

/// Why a names text could not be read; `at` is a 0-based character offset into it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("at character {at}: {reason}")]
pub struct NamesError {
    pub at: usize,
    pub reason: String,
}

/// The names in class order from `str(dict)` with keys 0…n−1 in any order, or `str(list)`.
pub fn parse_names(text: &str) -> Result<Vec<String>, NamesError> {
    let mut parser = Parser {
        chars: text.chars().collect(),
        at: 0,
    };
    parser.skip_spaces();
    let names = match parser.peek() {
        Some('{') => parser.dict()?,
        Some('[') => parser.list()?,
        _ => return Err(parser.error("expected '{' or '['")),
    };
    parser.skip_spaces();
    if parser.at < parser.chars.len() {
        return Err(parser.error("unexpected text after the closing bracket"));
    }
    Ok(names)
}

/// A labels file: one name per line, in class order. Blank lines at the end are ignored;
/// a blank line before a name is an error (it would shift every class after it).
pub fn read_labels(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read labels file {}: {error}", path.display()))?;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let used = lines
        .iter()
        .rposition(|line| !line.is_empty())
        .map_or(0, |last| last + 1);
    if used == 0 {
        return Err(format!("labels file {} has no names", path.display()));
    }
    if let Some(blank) = lines[..used].iter().position(|line| line.is_empty()) {
        return Err(format!(
            "labels file {} line {}: empty name (one class name per line, in class order)",
            path.display(),
            blank + 1
        ));
    }
    Ok(lines[..used].iter().map(|line| line.to_string()).collect())
}

/// `class0`, `class1`, …: the names of a model that gives none.
pub fn numbered_names(count: usize) -> Vec<String> {
    (0..count).map(|class| format!("class{class}")).collect()
}

struct Parser {
    chars: Vec<char>,
    at: usize,
}

impl Parser {
    fn error(&self, reason: impl Into<String>) -> NamesError {
        NamesError {
            at: self.at,
            reason: reason.into(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.at).copied()
    }

    fn skip_spaces(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.at += 1;
        }
    }

    fn expect(&mut self, wanted: char) -> Result<(), NamesError> {
        self.skip_spaces();
        if self.peek() == Some(wanted) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(format!("expected '{wanted}'")))
        }
    }

    /// Consumes `close` (after spaces) and says so, or a comma before the next item.
    fn end_or_comma(&mut self, close: char) -> Result<bool, NamesError> {
        self.skip_spaces();
        match self.peek() {
            Some(c) if c == close => {
                self.at += 1;
                Ok(true)
            }
            Some(',') => {
                self.at += 1;
                self.skip_spaces();
                // Python accepts a trailing comma.
                if self.peek() == Some(close) {
                    self.at += 1;
                    return Ok(true);
                }
                Ok(false)
            }
            _ => Err(self.error(format!("expected ',' or '{close}'"))),
        }
    }

    fn dict(&mut self) -> Result<Vec<String>, NamesError> {
        self.expect('{')?;
        let mut entries: Vec<(usize, usize, String)> = Vec::new();
        self.skip_spaces();
        if self.peek() == Some('}') {
            return Err(self.error("no names in the dict"));
        }
        loop {
            self.skip_spaces();
            let key_at = self.at;
            let key = self.integer()?;
            self.expect(':')?;
            self.skip_spaces();
            let name = self.string()?;
            entries.push((key, key_at, name));
            if self.end_or_comma('}')? {
                break;
            }
        }
        let count = entries.len();
        let mut names: Vec<Option<String>> = vec![None; count];
        for (key, key_at, name) in entries {
            let slot = names.get_mut(key).ok_or_else(|| NamesError {
                at: key_at,
                reason: format!(
                    "class {key} is out of order: the keys must be 0 to {} for {count} names",
                    count - 1
                ),
            })?;
            if slot.is_some() {
                return Err(NamesError {
                    at: key_at,
                    reason: format!("class {key} is named twice"),
                });
            }
            *slot = Some(name);
        }
        Ok(names.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn list(&mut self) -> Result<Vec<String>, NamesError> {
        self.expect('[')?;
        self.skip_spaces();
        if self.peek() == Some(']') {
            return Err(self.error("no names in the list"));
        }
        let mut names = Vec::new();
        loop {
            self.skip_spaces();
            names.push(self.string()?);
            if self.end_or_comma(']')? {
                return Ok(names);
            }
        }
    }

    fn integer(&mut self) -> Result<usize, NamesError> {
        let start = self.at;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.at += 1;
        }
        if start == self.at {
            return Err(self.error("expected a class number"));
        }
        let digits: String = self.chars[start..self.at].iter().collect();
        digits.parse().map_err(|_| NamesError {
            at: start,
            reason: format!("class number {digits} is too large"),
        })
    }

    fn string(&mut self) -> Result<String, NamesError> {
        let quote = match self.peek() {
            Some(quote @ ('\'' | '"')) => quote,
            _ => return Err(self.error("expected a quoted name")),
        };
        let start = self.at;
        self.at += 1;
        let mut name = String::new();
        loop {
            let Some(c) = self.peek() else {
                return Err(NamesError {
                    at: start,
                    reason: "the name's quote is never closed".into(),
                });
            };
            self.at += 1;
            match c {
                c if c == quote => return Ok(name),
                '\\' => name.push(self.escape()?),
                c => name.push(c),
            }
        }
    }

    /// The character after a backslash, as Python's `repr` of a `str` writes them.
    fn escape(&mut self) -> Result<char, NamesError> {
        let at = self.at - 1;
        let c = self
            .peek()
            .ok_or_else(|| self.error("a backslash ends the text"))?;
        self.at += 1;
        let digits = match c {
            '\\' | '\'' | '"' => return Ok(c),
            'n' => return Ok('\n'),
            't' => return Ok('\t'),
            'r' => return Ok('\r'),
            'x' => 2,
            'u' => 4,
            'U' => 8,
            other => {
                return Err(NamesError {
                    at,
                    reason: format!("unknown escape \\{other}"),
                })
            }
        };
        let end = self.at + digits;
        let hex: String = self.chars.get(self.at..end).unwrap_or(&[]).iter().collect();
        self.at = end.min(self.chars.len());
        u32::from_str_radix(&hex, 16)
            .ok()
            .filter(|_| hex.len() == digits)
            .and_then(char::from_u32)
            .ok_or_else(|| NamesError {
                at,
                reason: format!("escape \\{c} needs {digits} hex digits of a character"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_python_str_of_a_dict() {
        let text = r#"{0: 'person', 1: "cat's toy", 2: 'a\\b \'q\' \xe9\u00e9', 3: 'tab\there'}"#;
        assert_eq!(
            parse_names(text).unwrap(),
            ["person", "cat's toy", "a\\b 'q' éé", "tab\there"]
        );
    }

    #[test]
    fn keys_may_come_in_any_order_and_a_list_works_too() {
        assert_eq!(parse_names("{1: 'b', 0: 'a'}").unwrap(), ["a", "b"]);
        assert_eq!(parse_names(" ['a', \"b\",] ").unwrap(), ["a", "b"]);
        assert_eq!(parse_names("{0: 'a',}").unwrap(), ["a"]);
    }

    #[test]
    fn malformed_names_say_what_and_where() {
        let cases = [
            ("", 0, "expected '{' or '['"),
            ("{0: 'person', 1: 'dog'", 22, "expected ',' or '}'"),
            ("{0 'person'}", 3, "expected ':'"),
            ("{a: 'person'}", 1, "expected a class number"),
            ("{0: person}", 4, "expected a quoted name"),
            ("{0: 'person}", 4, "never closed"),
            (
                "{0: 'a', 2: 'b'}",
                9,
                "class 2 is out of order: the keys must be 0 to 1",
            ),
            ("{0: 'a', 0: 'b'}", 9, "class 0 is named twice"),
            ("{0: 'a\\q'}", 6, "unknown escape \\q"),
            ("{0: 'a\\x4'}", 6, "needs 2 hex digits"),
            ("{0: 'a'} x", 9, "unexpected text"),
            ("{}", 1, "no names"),
            ("[]", 1, "no names"),
            ("{99999999999999999999999: 'a'}", 1, "too large"),
        ];
        for (text, at, reason) in cases {
            let error = parse_names(text).unwrap_err();
            assert_eq!(error.at, at, "{text:?}: {error}");
            assert!(error.reason.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn labels_file_one_name_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labels.txt");
        std::fs::write(&path, "person\r\n dog \n\n").unwrap();
        assert_eq!(read_labels(&path).unwrap(), ["person", "dog"]);

        std::fs::write(&path, "person\n\ndog\n").unwrap();
        let error = read_labels(&path).unwrap_err();
        assert!(error.contains("labels.txt line 2: empty name"), "{error}");

        std::fs::write(&path, "\n \n").unwrap();
        assert!(read_labels(&path).unwrap_err().contains("has no names"));

        let missing = dir.path().join("missing.txt");
        let error = read_labels(&missing).unwrap_err();
        assert!(error.contains("cannot read labels file") && error.contains("missing.txt"));
    }

    #[test]
    fn numbered_when_nothing_names_the_classes() {
        assert_eq!(numbered_names(2), ["class0", "class1"]);
    }
}
