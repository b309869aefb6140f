//! PDF text layers through `pdf-extract`, one page at a time so that citations carry a page
//! number. pdf-extract panics on some malformed or exotic files, so it runs under
//! `catch_unwind`: a panic is that document's error, never the process's end.

use std::panic::{catch_unwind, AssertUnwindSafe};

use super::{paragraphs, ExtractError, Extracted, Kind};

pub(super) fn extract(bytes: &[u8], fallback_title: String) -> Result<Extracted, ExtractError> {
    if !bytes.starts_with(b"%PDF-") {
        return Err(ExtractError::Pdf(
            "the file does not start with %PDF- (not a PDF)".to_string(),
        ));
    }
    let pages = catch_unwind(AssertUnwindSafe(|| {
        pdf_extract::extract_text_from_mem_by_pages(bytes)
    }))
    .map_err(|panic| {
        let reason = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the PDF reader failed".to_string());
        ExtractError::Pdf(reason)
    })?
    .map_err(|error| ExtractError::Pdf(error.to_string()))?;

    let mut text = String::new();
    let mut blocks = Vec::new();
    for (index, page) in pages.iter().enumerate() {
        let page_text = page.replace("\r\n", "\n").replace('\r', "\n");
        if page_text.trim().is_empty() {
            continue;
        }
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        let start = text.len();
        text.push_str(&page_text);
        blocks.extend(paragraphs(
            &text,
            start..text.len(),
            &[],
            Some(index as u32 + 1),
        ));
    }
    Ok(Extracted {
        kind: Kind::Pdf,
        title: fallback_title,
        text,
        blocks,
    })
}
