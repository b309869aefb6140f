//! HTML through `scraper` (html5ever, the browsers' parsing algorithm, so broken markup still
//! parses the way a browser would show it). We walk the tree ourselves because citations need
//! the structure html2text flattens: the title, h1–h6 as a heading path, block elements as
//! paragraphs, `<pre>` kept as code; script, style and other invisible content dropped.

use scraper::{ElementRef, Html, Node};

use super::{Block, BlockRole, Extracted, Kind};

/// Elements whose content is never shown as text.
const INVISIBLE: &[&str] = &[
    "script", "style", "noscript", "template", "head", "svg", "math", "iframe", "object", "canvas",
    "button", "select", "textarea",
];

/// Elements that end the running paragraph before and after them.
const BLOCK_LEVEL: &[&str] = &[
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "dd",
    "details",
    "dialog",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "section",
    "summary",
    "table",
    "tbody",
    "thead",
    "tfoot",
    "tr",
    "ul",
    "caption",
];

struct Walker {
    text: String,
    blocks: Vec<Block>,
    /// The running paragraph's inline text, whitespace already collapsed.
    pending: String,
    headings: Vec<(usize, String)>,
    first_h1: Option<String>,
}

/// Appends `raw` with runs of whitespace collapsed to one space, as a browser renders it.
fn push_collapsed(out: &mut String, raw: &str) {
    for (i, word) in raw.split_whitespace().enumerate() {
        let starts_with_space = i > 0 || raw.starts_with(char::is_whitespace);
        if starts_with_space && !out.is_empty() && !out.ends_with(' ') {
            out.push(' ');
        }
        out.push_str(word);
    }
    if raw.ends_with(char::is_whitespace) && !out.is_empty() && !out.ends_with(' ') {
        out.push(' ');
    }
}

fn visible_text(element: ElementRef<'_>) -> String {
    let mut out = String::new();
    collect_text(element, &mut out);
    out.trim().to_string()
}

fn collect_text(element: ElementRef<'_>, out: &mut String) {
    for child in element.children() {
        match child.value() {
            Node::Text(text) => push_collapsed(out, text),
            Node::Element(e) if INVISIBLE.contains(&e.name()) => {}
            Node::Element(_) => {
                if let Some(child) = ElementRef::wrap(child) {
                    collect_text(child, out);
                }
            }
            _ => {}
        }
    }
}

impl Walker {
    fn path(&self) -> Vec<String> {
        self.headings.iter().map(|(_, t)| t.clone()).collect()
    }

    fn push_block(&mut self, content: &str, role: BlockRole) {
        let content = content.trim();
        if content.is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str("\n\n");
        }
        let start = self.text.len();
        self.text.push_str(content);
        self.blocks.push(Block {
            range: start..self.text.len(),
            role,
            heading_path: self.path(),
            page: None,
        });
    }

    fn flush(&mut self) {
        let pending = std::mem::take(&mut self.pending);
        self.push_block(&pending, BlockRole::Paragraph);
    }

    fn walk(&mut self, element: ElementRef<'_>) {
        for child in element.children() {
            match child.value() {
                Node::Text(text) => push_collapsed(&mut self.pending, text),
                Node::Element(e) => {
                    let Some(child_element) = ElementRef::wrap(child) else {
                        continue;
                    };
                    let name = e.name();
                    if INVISIBLE.contains(&name) {
                        continue;
                    }
                    if let Some(level) = heading_level(name) {
                        self.flush();
                        let heading = visible_text(child_element);
                        if heading.is_empty() {
                            continue;
                        }
                        if level == 1 && self.first_h1.is_none() {
                            self.first_h1 = Some(heading.clone());
                        }
                        while self.headings.last().is_some_and(|(l, _)| *l >= level) {
                            self.headings.pop();
                        }
                        self.headings.push((level, heading.clone()));
                        self.push_block(&heading, BlockRole::Heading);
                    } else if name == "pre" {
                        self.flush();
                        // Preformatted text keeps its lines and indentation.
                        let code: String = child_element.text().collect();
                        self.push_block(&code, BlockRole::Code);
                    } else if name == "br" {
                        self.pending.push(' ');
                    } else if BLOCK_LEVEL.contains(&name) {
                        self.flush();
                        self.walk(child_element);
                        self.flush();
                    } else {
                        // Inline (a, em, span, td...): part of the running paragraph; table
                        // cells are kept apart by a space.
                        if matches!(name, "td" | "th") && !self.pending.ends_with(' ') {
                            self.pending.push(' ');
                        }
                        self.walk(child_element);
                    }
                }
                _ => {}
            }
        }
    }
}

fn heading_level(name: &str) -> Option<usize> {
    match name {
        "h1" => Some(1),
        "h2" => Some(2),
        "h3" => Some(3),
        "h4" => Some(4),
        "h5" => Some(5),
        "h6" => Some(6),
        _ => None,
    }
}

pub(super) fn extract(source: &str, fallback_title: String) -> Extracted {
    let document = Html::parse_document(source);
    let root = document.root_element();
    let title = root
        .descendants()
        .filter_map(ElementRef::wrap)
        .find(|e| e.value().name() == "title")
        .map(visible_text_including_head)
        .filter(|t| !t.is_empty());
    let mut walker = Walker {
        text: String::new(),
        blocks: Vec::new(),
        pending: String::new(),
        headings: Vec::new(),
        first_h1: None,
    };
    walker.walk(root);
    walker.flush();
    Extracted {
        kind: Kind::Html,
        title: title.or(walker.first_h1.clone()).unwrap_or(fallback_title),
        text: walker.text,
        blocks: walker.blocks,
    }
}

/// `<title>` lives in `<head>`, which the walk skips; read it directly.
fn visible_text_including_head(element: ElementRef<'_>) -> String {
    let mut out = String::new();
    for text in element.text() {
        push_collapsed(&mut out, text);
    }
    out.trim().to_string()
}
