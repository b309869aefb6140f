//! A hand-written Markdown reader: enough structure for chunking and citations (ATX and setext
//! headings as a heading path, paragraphs, fenced code kept whole), not a renderer. The text is
//! the source itself, so a chunk shows exactly what the author wrote.

use super::{trimmed_block, BlockRole, Extracted, Kind};

struct Line<'a> {
    start: usize,
    end: usize,
    text: &'a str,
}

fn lines(text: &str) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        out.push(Line {
            start: offset,
            end: offset + line.len(),
            text: line.trim_end_matches('\n'),
        });
        offset += line.len();
    }
    out
}

/// Up to three spaces of indentation, as CommonMark allows before block markers.
fn unindent(line: &str) -> Option<&str> {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    (spaces <= 3).then(|| &line[spaces..])
}

/// `(level, heading text)` of an ATX heading line (`## Title ##`).
fn atx_heading(line: &str) -> Option<(usize, String)> {
    let rest = unindent(line)?;
    let level = rest.len() - rest.trim_start_matches('#').len();
    if !(1..=6).contains(&level) {
        return None;
    }
    let after = &rest[level..];
    if !(after.is_empty() || after.starts_with(' ') || after.starts_with('\t')) {
        return None;
    }
    let mut title = after.trim();
    // A closing sequence of #s is decoration, when separated by a space (or all there is).
    let without_closing = title.trim_end_matches('#');
    if without_closing.is_empty() || without_closing.ends_with([' ', '\t']) {
        title = without_closing.trim_end();
    }
    Some((level, title.to_string()))
}

/// The fence (character and length) opening a fenced code block.
fn fence_open(line: &str) -> Option<(char, usize)> {
    let rest = unindent(line)?;
    let marker = rest.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let length = rest.len() - rest.trim_start_matches(marker).len();
    let info = &rest[length..];
    (length >= 3 && !(marker == '`' && info.contains('`'))).then_some((marker, length))
}

fn fence_closes(line: &str, marker: char, length: usize) -> bool {
    let Some(rest) = unindent(line) else {
        return false;
    };
    let run = rest.len() - rest.trim_start_matches(marker).len();
    run >= length && rest[run..].trim().is_empty()
}

/// `=` underlines make a level-1 heading of the paragraph above, `-` a level-2 one.
fn setext_level(line: &str) -> Option<usize> {
    let rest = unindent(line)?.trim_end();
    if !rest.is_empty() && rest.chars().all(|c| c == '=') {
        Some(1)
    } else if !rest.is_empty() && rest.chars().all(|c| c == '-') {
        Some(2)
    } else {
        None
    }
}

/// `***`, `---`, `___` (spaces allowed): a line with no words.
fn thematic_break(line: &str) -> bool {
    let Some(rest) = unindent(line) else {
        return false;
    };
    let compact: String = rest.chars().filter(|c| !c.is_whitespace()).collect();
    compact.len() >= 3
        && (compact.chars().all(|c| c == '*')
            || compact.chars().all(|c| c == '-')
            || compact.chars().all(|c| c == '_'))
}

struct Headings(Vec<(usize, String)>);

impl Headings {
    fn enter(&mut self, level: usize, title: String) {
        while self.0.last().is_some_and(|(l, _)| *l >= level) {
            self.0.pop();
        }
        self.0.push((level, title));
    }
    fn path(&self) -> Vec<String> {
        self.0.iter().map(|(_, t)| t.clone()).collect()
    }
}

pub(super) fn extract(text: &str, fallback_title: String) -> Extracted {
    let lines = lines(text);
    let mut blocks = Vec::new();
    let mut headings = Headings(Vec::new());
    let mut title: Option<String> = None;
    let mut i = 0;
    while i < lines.len() {
        let line = &lines[i];
        if line.text.trim().is_empty() {
            i += 1;
            continue;
        }
        if let Some((marker, length)) = fence_open(line.text) {
            // The whole fence, markers included, is one block: code loses its meaning when cut
            // in the middle, and an unclosed fence runs to the end of the file (CommonMark).
            let mut j = i + 1;
            while j < lines.len() && !fence_closes(lines[j].text, marker, length) {
                j += 1;
            }
            let last = j.min(lines.len() - 1);
            blocks.extend(trimmed_block(
                text,
                line.start..lines[last].end,
                BlockRole::Code,
                &headings.path(),
                None,
            ));
            i = last + 1;
            continue;
        }
        if let Some((level, heading)) = atx_heading(line.text) {
            if level == 1 && title.is_none() && !heading.is_empty() {
                title = Some(heading.clone());
            }
            headings.enter(level, heading);
            blocks.extend(trimmed_block(
                text,
                line.start..line.end,
                BlockRole::Heading,
                &headings.path(),
                None,
            ));
            i += 1;
            continue;
        }
        if thematic_break(line.text) {
            i += 1;
            continue;
        }
        // A paragraph: lines up to a blank line or the start of another block, or up to a
        // setext underline that turns it into a heading.
        let mut j = i + 1;
        let mut setext = None;
        while j < lines.len() {
            let next = lines[j].text;
            if next.trim().is_empty() || fence_open(next).is_some() || atx_heading(next).is_some() {
                break;
            }
            if let Some(level) = setext_level(next) {
                setext = Some(level);
                break;
            }
            j += 1;
        }
        match setext {
            Some(level) => {
                let heading = lines[i..j]
                    .iter()
                    .map(|l| l.text.trim())
                    .collect::<Vec<_>>()
                    .join(" ");
                if level == 1 && title.is_none() {
                    title = Some(heading.clone());
                }
                headings.enter(level, heading);
                blocks.extend(trimmed_block(
                    text,
                    line.start..lines[j].end,
                    BlockRole::Heading,
                    &headings.path(),
                    None,
                ));
                i = j + 1;
            }
            None => {
                blocks.extend(trimmed_block(
                    text,
                    line.start..lines[j - 1].end,
                    BlockRole::Paragraph,
                    &headings.path(),
                    None,
                ));
                i = j;
            }
        }
    }
    Extracted {
        kind: Kind::Markdown,
        title: title.unwrap_or(fallback_title),
        text: text.to_string(),
        blocks,
    }
}
