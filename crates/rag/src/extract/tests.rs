use super::*;

fn options() -> ExtractOptions {
    ExtractOptions::default()
}

fn block_texts(extracted: &Extracted) -> Vec<&str> {
    extracted
        .blocks
        .iter()
        .map(|b| &extracted.text[b.range.clone()])
        .collect()
}

/// A minimal valid PDF written by hand: a catalog, a page tree, one page per text with a
/// Helvetica text stream, and a cross-reference table with the objects' real byte offsets.
pub(crate) fn minimal_pdf(pages: &[&str]) -> Vec<u8> {
    let page_count = pages.len();
    // Objects: 1 catalog, 2 pages, 3 font, then (page, contents) per page.
    let mut objects: Vec<String> = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {page_count} >>",
            (0..page_count)
                .map(|i| format!("{} 0 R", 4 + 2 * i))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"
            .to_string(),
    ];
    for (i, text) in pages.iter().enumerate() {
        let mut stream = String::from("BT /F1 12 Tf 72 720 Td 14 TL\n");
        for line in text.lines() {
            let escaped = line
                .replace('\\', "\\\\")
                .replace('(', "\\(")
                .replace(')', "\\)");
            stream.push_str(&format!("({escaped}) Tj T*\n"));
        }
        stream.push_str("ET");
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {} 0 R \
             /Resources << /Font << /F1 3 0 R >> >> >>",
            5 + 2 * i
        ));
        objects.push(format!(
            "<< /Length {} >>\nstream\n{stream}\nendstream",
            stream.len()
        ));
    }
    let mut out = String::from("%PDF-1.4\n");
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.push_str(&format!("{} 0 obj\n{object}\nendobj\n", i + 1));
    }
    let xref = out.len();
    out.push_str(&format!(
        "xref\n0 {}\n0000000000 65535 f \n",
        objects.len() + 1
    ));
    for offset in offsets {
        out.push_str(&format!("{offset:010} 00000 n \n"));
    }
    out.push_str(&format!(
        "trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n",
        objects.len() + 1
    ));
    out.into_bytes()
}

#[test]
fn plain_text_is_cut_into_paragraphs_with_the_file_name_as_title() {
    let source = "First paragraph,\nstill first.\r\n\r\n  \nSecond one.\n\n\n";
    let extracted = extract("notes/todo.txt", source.as_bytes(), &options()).unwrap();
    assert_eq!(extracted.kind, Kind::Text);
    assert_eq!(extracted.title, "todo.txt");
    assert_eq!(
        block_texts(&extracted),
        vec!["First paragraph,\nstill first.", "Second one."]
    );
    assert!(extracted.blocks.iter().all(|b| b.heading_path.is_empty()));
}

#[test]
fn markdown_headings_make_a_heading_path_and_code_stays_whole() {
    let source = "\
Guide
=====

Intro text.

## Install ##

Run the installer.

```sh
echo one

echo two
```

### Linux
On Linux,
use apt.

Setext two
----------
Under setext.

# Other
---
After a break.
";
    let extracted = extract("guide.md", source.as_bytes(), &options()).unwrap();
    assert_eq!(extracted.title, "Guide");
    let found: Vec<(&str, Vec<String>, BlockRole)> = extracted
        .blocks
        .iter()
        .map(|b| {
            (
                &extracted.text[b.range.clone()],
                b.heading_path.clone(),
                b.role,
            )
        })
        .collect();
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            ("Guide\n=====", path(&["Guide"]), BlockRole::Heading),
            ("Intro text.", path(&["Guide"]), BlockRole::Paragraph),
            (
                "## Install ##",
                path(&["Guide", "Install"]),
                BlockRole::Heading
            ),
            (
                "Run the installer.",
                path(&["Guide", "Install"]),
                BlockRole::Paragraph
            ),
            (
                "```sh\necho one\n\necho two\n```",
                path(&["Guide", "Install"]),
                BlockRole::Code
            ),
            (
                "### Linux",
                path(&["Guide", "Install", "Linux"]),
                BlockRole::Heading
            ),
            (
                "On Linux,\nuse apt.",
                path(&["Guide", "Install", "Linux"]),
                BlockRole::Paragraph
            ),
            (
                "Setext two\n----------",
                path(&["Guide", "Setext two"]),
                BlockRole::Heading
            ),
            (
                "Under setext.",
                path(&["Guide", "Setext two"]),
                BlockRole::Paragraph
            ),
            ("# Other", path(&["Other"]), BlockRole::Heading),
            ("After a break.", path(&["Other"]), BlockRole::Paragraph),
        ]
    );
}

#[test]
fn an_unclosed_fence_runs_to_the_end_and_hash_without_space_is_text() {
    let source = "#hashtag is text\n\n```\ncode\n\nmore code";
    let extracted = extract("a.md", source.as_bytes(), &options()).unwrap();
    assert_eq!(extracted.title, "a.md");
    assert_eq!(
        block_texts(&extracted),
        vec!["#hashtag is text", "```\ncode\n\nmore code"]
    );
    assert_eq!(extracted.blocks[0].role, BlockRole::Paragraph);
}

#[test]
fn html_keeps_title_headings_and_paragraphs_and_drops_scripts() {
    let source = r#"<!DOCTYPE html><html><head><title> The  Manual </title>
<style>body { color: red }</style><script>var hidden = "secret";</script></head>
<body><nav>Home</nav>
<h1>Start</h1><p>Plug it <b>in</b>,
   then   wait.</p>
<div>Loose text<br>next line</div>
<h2>Details</h2><ul><li>One</li><li>Two</li></ul>
<pre>fn main() {
    run();
}</pre>
<table><tr><td>a</td><td>b</td></tr></table>
<h2>More</h2><p>Last.</p><noscript>no</noscript></body></html>"#;
    let extracted = extract("manual.html", source.as_bytes(), &options()).unwrap();
    assert_eq!(extracted.kind, Kind::Html);
    assert_eq!(extracted.title, "The Manual");
    assert!(!extracted.text.contains("secret") && !extracted.text.contains("color"));
    let found: Vec<(&str, Vec<String>)> = extracted
        .blocks
        .iter()
        .map(|b| (&extracted.text[b.range.clone()], b.heading_path.clone()))
        .collect();
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        found,
        vec![
            ("Home", path(&[])),
            ("Start", path(&["Start"])),
            ("Plug it in, then wait.", path(&["Start"])),
            ("Loose text next line", path(&["Start"])),
            ("Details", path(&["Start", "Details"])),
            ("One", path(&["Start", "Details"])),
            ("Two", path(&["Start", "Details"])),
            ("fn main() {\n    run();\n}", path(&["Start", "Details"])),
            ("a b", path(&["Start", "Details"])),
            ("More", path(&["Start", "More"])),
            ("Last.", path(&["Start", "More"])),
        ]
    );
    assert_eq!(extracted.blocks[7].role, BlockRole::Code);
}

#[test]
fn a_pdf_is_read_page_by_page() {
    let pdf = minimal_pdf(&["Hello from page one.", "Second page speaks\nof llamas."]);
    let extracted = extract("report.pdf", &pdf, &options()).unwrap();
    assert_eq!(extracted.kind, Kind::Pdf);
    assert_eq!(extracted.title, "report.pdf");
    let pages: Vec<Option<u32>> = extracted.blocks.iter().map(|b| b.page).collect();
    assert!(
        pages.contains(&Some(1)) && pages.contains(&Some(2)),
        "{extracted:?}"
    );
    let page_text = |n| {
        extracted
            .blocks
            .iter()
            .filter(|b| b.page == Some(n))
            .map(|b| extracted.text[b.range.clone()].to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert!(
        page_text(1).contains("Hello from page one."),
        "{extracted:?}"
    );
    assert!(page_text(2).contains("llamas"), "{extracted:?}");
}

#[test]
fn a_corrupt_pdf_is_a_clear_error_not_a_crash() {
    let mut pdf = minimal_pdf(&["Some text."]);
    // Keep the header, wreck the rest: objects, xref and trailer.
    for byte in pdf.iter_mut().skip(20) {
        *byte = b'#';
    }
    let error = extract("broken.pdf", &pdf, &options()).unwrap_err();
    assert!(matches!(error, ExtractError::Pdf(_)), "{error:?}");
    assert!(
        error
            .to_string()
            .starts_with("unsupported or corrupt PDF: "),
        "{error}"
    );
    // Named .pdf but not one at all.
    let error = extract("fake.pdf", b"just text", &options()).unwrap_err();
    assert!(error.to_string().contains("not a PDF"), "{error}");
    // Truncated in the middle of its objects.
    let whole = minimal_pdf(&["Some text."]);
    let error = extract("cut.pdf", &whole[..whole.len() / 2], &options()).unwrap_err();
    assert!(matches!(error, ExtractError::Pdf(_)), "{error:?}");
}

#[test]
fn kinds_come_from_the_extension_then_the_content() {
    assert_eq!(detect_kind("a.MD", b"x").unwrap(), Kind::Markdown);
    assert_eq!(detect_kind("dir.v2/a.htm", b"x").unwrap(), Kind::Html);
    assert_eq!(detect_kind("README", b"hello").unwrap(), Kind::Text);
    assert_eq!(
        detect_kind("page", b"  <!DOCTYPE html><p>x").unwrap(),
        Kind::Html
    );
    assert_eq!(detect_kind("scan.bin", b"%PDF-1.7 ...").unwrap(), Kind::Pdf);
    // A dot file has no extension.
    assert_eq!(detect_kind(".notes", b"hello").unwrap(), Kind::Text);
    let error = detect_kind("photo.png", b"\x89PNG\r\n").unwrap_err();
    assert_eq!(
        error,
        ExtractError::Unsupported {
            extension: Some("png".into())
        }
    );
    let message = error.to_string();
    assert!(
        message.contains(".png") && message.contains(".md") && message.contains(".pdf"),
        "{message}"
    );
    assert!(matches!(
        detect_kind("blob", &[0xff, 0xfe, 0x00]),
        Err(ExtractError::Unsupported { extension: None })
    ));
}

#[test]
fn binary_invalid_empty_and_huge_documents_are_refused_with_reasons() {
    let error = extract("a.txt", b"ok so far \xff\xfe", &options()).unwrap_err();
    assert_eq!(error, ExtractError::InvalidUtf8 { offset: 10 });
    assert!(error.to_string().contains("offset 10"), "{error}");
    let error = extract("a.txt", b"text\0more", &options()).unwrap_err();
    assert_eq!(error, ExtractError::Binary { offset: 4 });
    for (name, content) in [
        ("a.txt", ""),
        ("a.txt", " \n\n \t\n"),
        ("a.md", "---\n\n***\n"),
        (
            "a.html",
            "<html><head><title>t</title><script>x()</script></head><body> </body></html>",
        ),
    ] {
        let error = extract(name, content.as_bytes(), &options()).unwrap_err();
        assert_eq!(error, ExtractError::Empty, "{name}: {content:?}");
    }
    let small = ExtractOptions { max_file_bytes: 8 };
    let error = extract("a.txt", b"123456789", &small).unwrap_err();
    assert_eq!(error, ExtractError::TooLarge { size: 9, limit: 8 });
    assert!(
        error.to_string().contains("over the limit of 8 bytes"),
        "{error}"
    );
    // An empty PDF (no text layer) is empty, not corrupt.
    let error = extract("blank.pdf", &minimal_pdf(&[""]), &options()).unwrap_err();
    assert_eq!(error, ExtractError::Empty);
}
