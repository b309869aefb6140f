//! `flowers rag …`: a client of the RAG service's HTTP API, reached through the gateway like
//! any user would (`--gateway`, default `http://127.0.0.1:8080`, and the service's route,
//! `/rag` in the embedded default).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::table::Table;

#[derive(clap::Args, Debug)]
pub struct RagArgs {
    /// The gateway the RAG service is routed on.
    #[arg(
        long,
        global = true,
        env = "FLOWERS_GATEWAY",
        default_value = "http://127.0.0.1:8080"
    )]
    gateway: String,
    /// The RAG service's route on the gateway.
    #[arg(long, global = true, default_value = "/rag")]
    route: String,
    #[command(subcommand)]
    action: RagAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum RagAction {
    /// List collections with their documents and chunks.
    Collections,
    /// List a collection's documents.
    Documents {
        #[arg(long, short)]
        collection: String,
    },
    /// Add files or folders to a collection (created when missing). A folder is read by the
    /// RAG service itself, on its machine: changed files are replaced, unchanged ones skipped,
    /// and documents whose file is gone are deleted. A file is uploaded.
    Ingest {
        /// Files (.txt, .md, .html, .pdf) and folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[arg(long, short)]
        collection: String,
    },
    /// Show the chunks that best match a query.
    Search {
        query: String,
        #[arg(long, short)]
        collection: String,
        /// How many chunks (1..=100).
        #[arg(short, default_value_t = 5)]
        k: usize,
        /// hybrid (BM25 and dense, fused by score), hybrid_rrf (fused by rank), bm25 or dense.
        #[arg(long, default_value = "hybrid")]
        mode: String,
    },
    /// Ask a question; the answer streams, then the sources it cites.
    Ask {
        question: String,
        #[arg(long, short)]
        collection: String,
        /// The longest answer, in tokens.
        #[arg(long, default_value_t = 512)]
        max_tokens: u32,
        /// Sampling seed, for a repeatable answer.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Delete a collection and everything in it.
    DeleteCollection { name: String },
}

/// A client of one of Flowers' built-in services, through the gateway.
pub(crate) struct ServiceClient {
    pub http: reqwest::Client,
    /// The gateway and the service's route, e.g. `http://127.0.0.1:8080/rag`.
    pub base: String,
    /// The service's name in messages ("the RAG service").
    pub what: &'static str,
}

type Rag = ServiceClient;

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
}

impl ServiceClient {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// The answer when it is a success, else the service's `{code, message}` as the error.
    pub async fn check(&self, response: reqwest::Response) -> anyhow::Result<reqwest::Response> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        match serde_json::from_str::<ErrorBody>(&body) {
            Ok(error) => bail!("{} ({status}): {}", error.code, error.message),
            Err(_) => bail!("{} answered {status}: {}", self.what, body.trim()),
        }
    }

    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let response = request.send().await.with_context(|| {
            format!(
                "cannot reach {} at {} (is Flowers up, with the service routed there?)",
                self.what, self.base
            )
        })?;
        self.check(response).await
    }

    pub async fn get_json<T: for<'de> Deserialize<'de>>(&self, path: &str) -> anyhow::Result<T> {
        let response = self.send(self.http.get(self.url(path))).await?;
        response
            .json()
            .await
            .with_context(|| format!("{}'s answer is not what was expected", self.what))
    }

    pub async fn post_json<T: for<'de> Deserialize<'de>>(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let response = self.send(self.http.post(self.url(path)).json(body)).await?;
        response
            .json()
            .await
            .with_context(|| format!("{}'s answer is not what was expected", self.what))
    }
}

pub async fn run(args: RagArgs, json: bool) -> anyhow::Result<ExitCode> {
    let rag = Rag {
        what: "the RAG service",
        http: reqwest::Client::new(),
        base: format!(
            "{}{}",
            args.gateway.trim_end_matches('/'),
            args.route.trim_end_matches('/')
        ),
    };
    match args.action {
        RagAction::Collections => collections(&rag, json).await,
        RagAction::Documents { collection } => documents(&rag, json, &collection).await,
        RagAction::Ingest { paths, collection } => ingest(&rag, json, &paths, &collection).await,
        RagAction::Search {
            query,
            collection,
            k,
            mode,
        } => search(&rag, json, &query, &collection, k, &mode).await,
        RagAction::Ask {
            question,
            collection,
            max_tokens,
            seed,
        } => ask(&rag, json, &question, &collection, max_tokens, seed).await,
        RagAction::DeleteCollection { name } => {
            let path = format!("/v1/collections/{}", encode(&name));
            rag.send(rag.http.delete(rag.url(&path))).await?;
            println!("deleted collection {name}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A path segment or query value, percent-encoded.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

async fn collections(rag: &Rag, json: bool) -> anyhow::Result<ExitCode> {
    #[derive(Deserialize)]
    struct Answer {
        collections: Vec<rag::Collection>,
    }
    let answer: Answer = rag.get_json("/v1/collections").await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer.collections)?);
        return Ok(ExitCode::SUCCESS);
    }
    if answer.collections.is_empty() {
        println!("no collections yet: `flowers rag ingest PATH --collection NAME` makes one");
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["NAME", "DOCUMENTS", "CHUNKS", "EMBEDDINGS"]);
    for c in answer.collections {
        let model = match (
            c.embedding_model,
            c.embedding_dimension,
            c.embedding_version,
        ) {
            (Some(model), Some(dimension), Some(version)) => {
                format!("{model} v{version} ({dimension})")
            }
            (Some(model), Some(dimension), None) => format!("{model} ({dimension})"),
            _ => "-".to_string(),
        };
        table.row(vec![
            c.name,
            c.documents.to_string(),
            c.chunks.to_string(),
            model,
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

async fn documents(rag: &Rag, json: bool, collection: &str) -> anyhow::Result<ExitCode> {
    #[derive(Deserialize)]
    struct Answer {
        documents: Vec<rag::Document>,
    }
    let path = format!("/v1/collections/{}/documents", encode(collection));
    let answer: Answer = rag.get_json(&path).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&answer.documents)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut table = Table::new(&["ID", "DOCUMENT", "TITLE", "CHUNKS", "SIZE"]);
    for d in answer.documents {
        table.row(vec![
            d.id.to_string(),
            d.source,
            d.title,
            d.chunk_count.to_string(),
            domain::ByteSize(d.size_bytes).to_string(),
        ]);
    }
    print!("{}", table.render());
    Ok(ExitCode::SUCCESS)
}

async fn ensure_collection(rag: &Rag, collection: &str) -> anyhow::Result<()> {
    let response = rag
        .http
        .post(rag.url("/v1/collections"))
        .json(&json!({ "name": collection }))
        .send()
        .await
        .with_context(|| format!("cannot reach the RAG service at {}", rag.base))?;
    if response.status() == reqwest::StatusCode::CONFLICT {
        return Ok(());
    }
    rag.check(response).await.map(drop)
}

async fn ingest(
    rag: &Rag,
    json: bool,
    paths: &[PathBuf],
    collection: &str,
) -> anyhow::Result<ExitCode> {
    ensure_collection(rag, collection).await?;
    let mut failed = 0;
    for path in paths {
        let absolute = std::path::absolute(path)
            .with_context(|| format!("cannot make {} absolute", path.display()))?;
        let metadata = std::fs::metadata(&absolute)
            .with_context(|| format!("{}: cannot read it", absolute.display()))?;
        let ok = if metadata.is_dir() {
            ingest_folder(rag, json, &absolute, collection).await?
        } else {
            upload(rag, json, &absolute, collection).await?
        };
        if !ok {
            failed += 1;
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn upload(rag: &Rag, json: bool, file: &Path, collection: &str) -> anyhow::Result<bool> {
    let name = file
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: the file name is not valid UTF-8", file.display()))?;
    let bytes =
        std::fs::read(file).with_context(|| format!("{}: cannot read it", file.display()))?;
    let path = format!(
        "/v1/collections/{}/documents?name={}",
        encode(collection),
        encode(name)
    );
    let response = rag
        .http
        .post(rag.url(&path))
        .body(bytes)
        .send()
        .await
        .with_context(|| format!("cannot reach the RAG service at {}", rag.base))?;
    let outcome: rag::IngestOutcome = match rag.check(response).await {
        Ok(response) => response.json().await?,
        Err(error) => {
            eprintln!("{}: {error:#}", file.display());
            return Ok(false);
        }
    };
    if json {
        println!("{}", serde_json::to_string(&outcome)?);
    } else {
        println!(
            "{}: {} ({} chunks)",
            file.display(),
            status_word(outcome.status),
            outcome.chunks
        );
    }
    Ok(true)
}

fn status_word(status: rag::IngestStatus) -> &'static str {
    match status {
        rag::IngestStatus::Added => "added",
        rag::IngestStatus::Replaced => "replaced",
        rag::IngestStatus::Unchanged => "unchanged",
    }
}

/// A folder ingest, its events drawn as a progress line on a terminal.
async fn ingest_folder(
    rag: &Rag,
    json: bool,
    folder: &Path,
    collection: &str,
) -> anyhow::Result<bool> {
    let path_text = folder
        .to_str()
        .with_context(|| format!("{}: the path is not valid UTF-8", folder.display()))?;
    let path = format!("/v1/collections/{}/ingest", encode(collection));
    let response = rag
        .send(
            rag.http
                .post(rag.url(&path))
                .json(&json!({ "path": path_text })),
        )
        .await?;
    let bytes = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut frames = Box::pin(client::sse::events(bytes));
    let terminal = !json && std::io::stderr().is_terminal();
    let mut drawn = false;
    while let Some(frame) = frames.next().await {
        let frame = frame.context("the ingest's event stream broke off")?;
        if json {
            println!("{}", frame.data);
        }
        match frame.event.as_deref() {
            Some("progress") | Some("file_error") | Some("deleted") => {
                let event: rag::IngestEvent = serde_json::from_str(&frame.data)
                    .context("an ingest event is not what was expected")?;
                if json {
                    continue;
                }
                match event {
                    rag::IngestEvent::Progress {
                        files_done,
                        files_total,
                        chunks,
                        file,
                        ..
                    } if terminal => {
                        let width = 24;
                        let filled = (files_done * width)
                            .checked_div(files_total)
                            .unwrap_or(width);
                        eprint!(
                            "\r\x1b[K[{}{}] {files_done}/{files_total} files, {chunks} chunks  {}",
                            "#".repeat(filled),
                            ".".repeat(width - filled),
                            short(&file, 40)
                        );
                        drawn = true;
                    }
                    rag::IngestEvent::FileError { file, message, .. } => {
                        if drawn {
                            eprintln!();
                            drawn = false;
                        }
                        eprintln!("{file}: {message}");
                    }
                    _ => {}
                }
            }
            Some("done") => {
                if drawn {
                    eprintln!();
                }
                let report: rag::FolderReport = serde_json::from_str(&frame.data)
                    .context("the ingest's report is not what was expected")?;
                if !json {
                    println!(
                        "{}: {} files: {} added, {} replaced, {} unchanged, {} deleted, {} failed; {} chunks added",
                        report.root,
                        report.files_total,
                        report.added,
                        report.replaced,
                        report.unchanged,
                        report.deleted,
                        report.failed,
                        report.chunks_added
                    );
                }
                return Ok(report.failed == 0);
            }
            Some("error") => {
                if drawn {
                    eprintln!();
                }
                let error: ErrorBody = serde_json::from_str(&frame.data)
                    .context("the ingest's error is not what was expected")?;
                bail!("{}: {} ({})", folder.display(), error.message, error.code);
            }
            _ => {}
        }
    }
    bail!(
        "{}: the RAG service closed the event stream before the ingest was done; what it committed stays, run the ingest again to finish",
        folder.display()
    )
}

fn short(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_string();
    }
    let tail: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{tail}")
}

async fn search(
    rag: &Rag,
    json: bool,
    query: &str,
    collection: &str,
    k: usize,
    mode: &str,
) -> anyhow::Result<ExitCode> {
    #[derive(Deserialize)]
    struct Answer {
        results: Vec<rag::Hit>,
    }
    let body = json!({ "collection": collection, "query": query, "k": k, "mode": mode });
    if json {
        let answer: serde_json::Value = rag.post_json("/v1/search", &body).await?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let answer: Answer = rag.post_json("/v1/search", &body).await?;
    if answer.results.is_empty() {
        println!("nothing matches");
    }
    for (rank, hit) in answer.results.iter().enumerate() {
        println!(
            "{}. {} — {} (score {:.4})",
            rank + 1,
            hit.document,
            hit.location_label,
            hit.score
        );
        println!("   {}", short_snippet(&hit.text, 200));
    }
    Ok(ExitCode::SUCCESS)
}

fn short_snippet(text: &str, width: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= width {
        return flat;
    }
    let cut: String = flat.chars().take(width).collect();
    format!("{cut}…")
}

async fn ask(
    rag: &Rag,
    json: bool,
    question: &str,
    collection: &str,
    max_tokens: u32,
    seed: Option<u64>,
) -> anyhow::Result<ExitCode> {
    let mut body = json!({
        "model": collection,
        "messages": [{ "role": "user", "content": question }],
        "max_tokens": max_tokens,
        "stream": !json,
    });
    if let Some(seed) = seed {
        body["seed"] = json!(seed);
    }
    if json {
        let answer: serde_json::Value = rag.post_json("/v1/chat/completions", &body).await?;
        println!("{}", serde_json::to_string_pretty(&answer)?);
        return Ok(ExitCode::SUCCESS);
    }
    let response = rag
        .send(rag.http.post(rag.url("/v1/chat/completions")).json(&body))
        .await?;
    let bytes = response
        .bytes_stream()
        .map(|chunk| chunk.map_err(std::io::Error::other));
    let mut frames = Box::pin(client::sse::events(bytes));
    let mut citations: Vec<rag::prompt::Citation> = Vec::new();
    let mut stdout = std::io::stdout();
    while let Some(frame) = frames.next().await {
        let frame = frame.context("the answer's stream broke off")?;
        if frame.data == "[DONE]" {
            break;
        }
        let chunk: serde_json::Value =
            serde_json::from_str(&frame.data).context("an answer chunk is not JSON")?;
        if let Some(error) = chunk.get("error") {
            bail!("the answer failed: {error}");
        }
        if let Some(cited) = chunk.get("citations") {
            citations = serde_json::from_value(cited.clone())
                .context("the citations are not what was expected")?;
        }
        if let Some(text) = chunk["choices"][0]["delta"]["content"].as_str() {
            print!("{text}");
            stdout.flush().ok();
        }
    }
    println!();
    if !citations.is_empty() {
        println!("\nsources:");
        for c in citations {
            println!("[{}] {} — {}", c.index, c.document, c.location);
        }
    }
    Ok(ExitCode::SUCCESS)
}
