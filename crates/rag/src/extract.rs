//! Text and structure out of a document's bytes: plain text, Markdown, HTML and PDF (its text
//! layer). Every extractor produces the same shape, an [`Extracted`]: one `text` and the
//! [`Block`]s (headings, paragraphs, code) that are byte ranges of it, each with its heading
//! path or page. The chunker only ever cuts along those blocks, and every chunk is a range of
//! `text`, so a citation's character range points into text the user can be shown.

mod html;
mod markdown;
mod pdf;

use std::ops::Range;

/// What kind of document a file is; decides the extractor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Text,
    Markdown,
    Html,
    Pdf,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Text => "text",
            Kind::Markdown => "markdown",
            Kind::Html => "html",
            Kind::Pdf => "pdf",
        }
    }

    pub fn parse(text: &str) -> Option<Kind> {
        match text {
            "text" => Some(Kind::Text),
            "markdown" => Some(Kind::Markdown),
            "html" => Some(Kind::Html),
            "pdf" => Some(Kind::Pdf),
            _ => None,
        }
    }

    fn from_extension(extension: &str) -> Option<Kind> {
        match extension.to_ascii_lowercase().as_str() {
            "txt" | "text" => Some(Kind::Text),
            "md" | "markdown" | "mdown" | "mkd" => Some(Kind::Markdown),
            "html" | "htm" | "xhtml" => Some(Kind::Html),
            "pdf" => Some(Kind::Pdf),
            _ => None,
        }
    }
}

/// The file types named in the unsupported-type error.
pub const SUPPORTED: &str = ".txt, .md/.markdown, .html/.htm, .pdf (and text, HTML or PDF \
                             content in a file without an extension)";

/// Why a document could not be read. Each message says what is wrong and what is accepted;
/// [`crate::Error::Document`] adds which document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtractError {
    #[error("unsupported file type{}; supported: {SUPPORTED}", extension.as_ref().map(|e| format!(" .{e}")).unwrap_or_default())]
    Unsupported { extension: Option<String> },
    #[error("not UTF-8 text: invalid byte at offset {offset} (a binary file, or another encoding; save it as UTF-8)")]
    InvalidUtf8 { offset: usize },
    #[error("binary content: NUL byte at offset {offset}; only text, Markdown, HTML and PDF are indexed")]
    Binary { offset: usize },
    #[error("empty document: no text to index after extraction")]
    Empty,
    #[error("file is {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
    #[error("unsupported or corrupt PDF: {0}")]
    Pdf(String),
}

/// The role of a block, which decides where the chunker may cut inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockRole {
    Heading,
    Paragraph,
    /// Fenced or preformatted code: cut only between lines, never between sentences.
    Code,
}

/// One heading, paragraph or code block: a byte range of [`Extracted::text`], trimmed of
/// surrounding whitespace, with where it sits in the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub range: Range<usize>,
    pub role: BlockRole,
    /// Headings enclosing the block, outermost first; a heading block's path ends with itself.
    pub heading_path: Vec<String>,
    /// 1-based page, for PDFs.
    pub page: Option<u32>,
}

/// A document's text and structure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub kind: Kind,
    pub title: String,
    pub text: String,
    /// In document order, not overlapping.
    pub blocks: Vec<Block>,
}

/// Limits of extraction.
#[derive(Debug, Clone, Copy)]
pub struct ExtractOptions {
    /// Larger files are refused before they are read (default 50 MiB): a huge file would hold
    /// the single ingest writer for minutes and its chunks would crowd out everything else.
    pub max_file_bytes: u64,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            max_file_bytes: 50 * 1024 * 1024,
        }
    }
}

/// The kind of a document named `name`: by its extension, then by sniffing its first bytes
/// when it has none (or one we do not know, if the content is unmistakably PDF or HTML).
pub fn detect_kind(name: &str, bytes: &[u8]) -> Result<Kind, ExtractError> {
    let file_name = name.rsplit(['/', '\\']).next().unwrap_or(name);
    let extension = file_name
        .rsplit_once('.')
        .filter(|(stem, _)| !stem.is_empty())
        .map(|(_, extension)| extension.to_string());
    if let Some(kind) = extension.as_deref().and_then(Kind::from_extension) {
        return Ok(kind);
    }
    if bytes.starts_with(b"%PDF-") {
        return Ok(Kind::Pdf);
    }
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).to_ascii_lowercase();
    let head = head.trim_start_matches('\u{feff}').trim_start();
    if head.starts_with("<!doctype html") || head.starts_with("<html") {
        return Ok(Kind::Html);
    }
    if extension.is_none() && check_text(bytes).is_ok() {
        return Ok(Kind::Text);
    }
    Err(ExtractError::Unsupported { extension })
}

/// Extracts a document. `name` is a file name or path (for the kind and the fallback title).
/// CPU-bound and possibly slow on big PDFs: async callers run it on a blocking thread.
pub fn extract(
    name: &str,
    bytes: &[u8],
    options: &ExtractOptions,
) -> Result<Extracted, ExtractError> {
    if bytes.len() as u64 > options.max_file_bytes {
        return Err(ExtractError::TooLarge {
            size: bytes.len() as u64,
            limit: options.max_file_bytes,
        });
    }
    let kind = detect_kind(name, bytes)?;
    let fallback_title = name
        .rsplit(['/', '\\'])
        .next()
        .filter(|n| !n.is_empty())
        .unwrap_or(name)
        .to_string();
    let extracted = match kind {
        Kind::Text => {
            let text = normalise(check_text(bytes)?);
            let blocks = paragraphs(&text, 0..text.len(), &[], None);
            Extracted {
                kind,
                title: fallback_title,
                text,
                blocks,
            }
        }
        Kind::Markdown => markdown::extract(&normalise(check_text(bytes)?), fallback_title),
        Kind::Html => html::extract(check_text(bytes)?, fallback_title),
        Kind::Pdf => pdf::extract(bytes, fallback_title)?,
    };
    if extracted.blocks.is_empty() {
        return Err(ExtractError::Empty);
    }
    Ok(extracted)
}

/// The bytes as text, refusing what is not UTF-8 or holds NUL (binary files often decode as
/// UTF-8 for their first kilobytes; a NUL never appears in a text document).
fn check_text(bytes: &[u8]) -> Result<&str, ExtractError> {
    let text = std::str::from_utf8(bytes).map_err(|error| ExtractError::InvalidUtf8 {
        offset: error.valid_up_to(),
    })?;
    if let Some(offset) = bytes.iter().position(|&b| b == 0) {
        return Err(ExtractError::Binary { offset });
    }
    Ok(text.strip_prefix('\u{feff}').unwrap_or(text))
}

/// Unix line ends, so offsets and blank-line detection do not depend on the editor that saved it.
fn normalise(text: &str) -> String {
    text.replace("\r\n", "\n").replace('\r', "\n")
}

/// The paragraphs (runs of non-blank lines) of `text[range]`, trimmed, as blocks.
fn paragraphs(
    text: &str,
    range: Range<usize>,
    heading_path: &[String],
    page: Option<u32>,
) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut start: Option<usize> = None;
    let mut end = range.start;
    let mut offset = range.start;
    for line in text[range.clone()].split_inclusive('\n') {
        let line_start = offset;
        offset += line.len();
        if line.trim().is_empty() {
            if let Some(s) = start.take() {
                blocks.extend(trimmed_block(
                    text,
                    s..end,
                    BlockRole::Paragraph,
                    heading_path,
                    page,
                ));
            }
        } else {
            start.get_or_insert(line_start);
            end = offset;
        }
    }
    if let Some(s) = start {
        blocks.extend(trimmed_block(
            text,
            s..end,
            BlockRole::Paragraph,
            heading_path,
            page,
        ));
    }
    blocks
}

/// A block over `range` with its surrounding whitespace cut off; none if nothing is left.
fn trimmed_block(
    text: &str,
    range: Range<usize>,
    role: BlockRole,
    heading_path: &[String],
    page: Option<u32>,
) -> Option<Block> {
    let slice = &text[range.clone()];
    let start = range.start + (slice.len() - slice.trim_start().len());
    let end = range.start + slice.trim_end().len();
    (start < end).then(|| Block {
        range: start..end,
        role,
        heading_path: heading_path.to_vec(),
        page,
    })
}

#[cfg(test)]
mod tests;
