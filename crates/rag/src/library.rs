//! The library: collections of documents on disk (`DIR/rag.sqlite` and `DIR/index/`), their
//! ingest and their search.
//!
//! **Visibility.** A document counts only once its SQLite row says `committed = 1`. An ingest
//! first does everything that writes nothing (read, extract, chunk, embed), then: one SQLite
//! transaction inserts the document (`committed = 0`), its chunks and vectors; the search index
//! adds the chunks and commits; one SQLite transaction deletes the version it replaces and sets
//! `committed = 1`; last, the replaced version's index entries are deleted. A `kill -9` at any
//! point leaves either the old version or the new one visible, whole. [`Library::open`] repairs
//! what a crash left: uncommitted rows, and index entries of documents that are not committed.
//! A folder ingest does the same for a batch of documents at a time (one index commit, one
//! visibility transaction): a batch is visible whole or not at all, and a file is reported done
//! only once its batch is.
//!
//! **One writer.** Ingests and deletions are serialised by an async mutex (tantivy has one
//! writer, and "unchanged, replaced or new" must not race); searches run concurrently.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::chunk::{chunk, Chunk, ChunkOptions};
use crate::embed::{normalise, Embed, Embedded};
use crate::extract::{extract, ExtractError, ExtractOptions, Kind};
use crate::index::{IndexedChunk, IndexedDocument, TextIndex};
use crate::search::{
    reciprocal_rank_fusion, relative_score_fusion, Filters, Hit, Location, Mode, SearchRequest,
    MAX_K,
};
use crate::vectors::{from_bytes, to_bytes, VectorSet};
use crate::{schema, Error, Result};

/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How many candidates each ranking contributes before fusion: fusing deeper lists than the
/// k asked for lets a chunk ranked modestly by both rankings rise above one ranked high by one.
const MIN_CANDIDATES: usize = 50;

/// A folder ingest's batch (see [`LibraryOptions::batch_chunks`]) is committed at the latest
/// this long after its first file was finished, so progress keeps flowing when embedding is
/// slow.
const BATCH_AGE: Duration = Duration::from_secs(1);

/// Knobs of a [`Library`].
#[derive(Debug, Clone, Copy)]
pub struct LibraryOptions {
    pub extract: ExtractOptions,
    pub chunk: ChunkOptions,
    /// Texts per request to the embedding engine (its own limit is larger; smaller batches
    /// keep one request's latency, and its memory, bounded).
    pub embed_batch_size: usize,
    /// A folder ingest commits its documents in batches (one search-index commit each, see
    /// `TextIndex::add_documents`, which costs far more than the additions): a batch is
    /// committed once it holds this many chunks, or `batch_documents` documents, or a second
    /// after its first file was finished. Every progress event reports a committed file.
    pub batch_chunks: usize,
    pub batch_documents: usize,
}

impl Default for LibraryOptions {
    fn default() -> Self {
        LibraryOptions {
            extract: ExtractOptions::default(),
            chunk: ChunkOptions::default(),
            embed_batch_size: 32,
            batch_chunks: 2000,
            batch_documents: 200,
        }
    }
}

/// A collection as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collection {
    pub name: String,
    /// Visible documents and their chunks.
    pub documents: u64,
    pub chunks: u64,
    /// Recorded at the first ingest; `None` while the collection is empty and never ingested.
    pub embedding_model: Option<String>,
    pub embedding_dimension: Option<usize>,
    /// The model's version, when its engine says (a Flowers engine does).
    pub embedding_version: Option<String>,
    pub created_ms: i64,
}

/// Where a document came from; decides when it is deleted by a folder ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    File,
    Folder,
    Upload,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::File => "file",
            Origin::Folder => "folder",
            Origin::Upload => "upload",
        }
    }
    fn parse(text: &str) -> Option<Origin> {
        match text {
            "file" => Some(Origin::File),
            "folder" => Some(Origin::Folder),
            "upload" => Some(Origin::Upload),
            _ => None,
        }
    }
}

/// A visible document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Document {
    pub id: i64,
    pub collection: String,
    /// An absolute path, or the name an upload was given.
    pub source: String,
    pub origin: Origin,
    /// The folder root a folder ingest found it under.
    pub folder_root: Option<String>,
    pub title: String,
    pub kind: Kind,
    /// sha256 of the bytes, hex.
    pub digest: String,
    pub size_bytes: u64,
    pub chunk_count: usize,
    pub created_ms: i64,
    pub committed_ms: Option<i64>,
}

/// What an ingest did with one document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestStatus {
    /// A source the collection did not have.
    Added,
    /// A changed file: its new version replaced the old one.
    Replaced,
    /// The same bytes as the visible version (same sha256): nothing was done.
    Unchanged,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestOutcome {
    pub document_id: i64,
    pub source: String,
    pub title: String,
    pub status: IngestStatus,
    pub chunks: usize,
}

/// One file a folder ingest could not take, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileError {
    pub file: String,
    pub message: String,
}

/// The totals of a folder ingest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderReport {
    pub root: String,
    pub files_total: usize,
    pub added: usize,
    pub replaced: usize,
    pub unchanged: usize,
    /// Documents deleted because their file is gone from the folder.
    pub deleted: usize,
    pub failed: usize,
    /// Chunks of the added and replaced documents.
    pub chunks_added: usize,
    pub errors: Vec<FileError>,
}

/// What a folder ingest reports as it goes (the HTTP route streams these as events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum IngestEvent {
    /// The folder was walked; `files_total` files will be read.
    Started { root: String, files_total: usize },
    /// One more file is done (`status` says what was done with it).
    Progress {
        files_done: usize,
        files_total: usize,
        /// Chunks added so far in this ingest.
        chunks: usize,
        file: String,
        status: IngestStatus,
    },
    /// A file (or a folder of the walk) could not be taken; the ingest goes on.
    FileError {
        files_done: usize,
        files_total: usize,
        file: String,
        message: String,
    },
    /// A document whose file is gone from the folder was deleted.
    Deleted { source: String },
}

/// The RAG library. Cheap to clone (one shared state); async methods do their SQLite and
/// tantivy work on blocking threads, so they need a tokio runtime.
#[derive(Clone)]
pub struct Library {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    options: LibraryOptions,
    /// The writer connection.
    db: Mutex<Connection>,
    /// Searches and listings read through their own connection: WAL lets them run while a
    /// large ingest transaction is open on the writer.
    reader: Mutex<Connection>,
    index: TextIndex,
    /// Per collection id, loaded on a collection's first dense search.
    vectors: Mutex<HashMap<i64, Arc<RwLock<VectorSet>>>>,
    writer_turn: tokio::sync::Mutex<()>,
}

#[derive(Debug, Clone)]
struct CollectionRow {
    id: i64,
    name: String,
    model: Option<String>,
    dimension: Option<usize>,
    version: Option<String>,
}

impl CollectionRow {
    /// Refuses vectors of another version of the collection's model (when both are known).
    fn check_version(&self, model: &str, version: Option<&str>) -> Result<()> {
        match (&self.version, version) {
            (Some(recorded), Some(now)) if recorded != now => {
                Err(Error::EmbeddingVersionMismatch {
                    collection: self.name.clone(),
                    model: self.model.clone().unwrap_or_else(|| model.to_string()),
                    recorded: recorded.clone(),
                    now: now.to_string(),
                })
            }
            _ => Ok(()),
        }
    }
}

struct Source {
    source: String,
    origin: Origin,
    folder_root: Option<String>,
}

/// What preparing one file found.
enum Step {
    /// Its digest matches the visible version: nothing to write.
    Unchanged(IngestOutcome),
    /// Extracted, chunked and embedded, to be committed (with others) into this collection.
    Ready(CollectionRow, Box<Pending>),
}

/// A document waiting for its batch's commit.
struct Pending {
    source: Source,
    prepared: Prepared,
    /// The visible version it replaces.
    replaces: Option<i64>,
}

/// A folder ingest's files finished since the last commit, in order, and the documents among
/// them still to be committed.
#[derive(Default)]
struct Batch {
    collection: Option<CollectionRow>,
    pending: Vec<Pending>,
    chunks: usize,
    finished: Vec<Finished>,
    since: Option<Instant>,
}

/// One file of a batch, in walk order; a `Pending` one takes its outcome from the commit.
enum Finished {
    Done {
        files_done: usize,
        file: String,
        outcome: Option<IngestOutcome>,
    },
    Failed {
        files_done: usize,
        file: String,
        message: String,
    },
}

impl Batch {
    fn finish(&mut self, finished: Finished) {
        self.since.get_or_insert_with(Instant::now);
        self.finished.push(finished);
    }

    fn add(
        &mut self,
        collection: CollectionRow,
        pending: Pending,
        files_done: usize,
        file: String,
    ) {
        self.chunks += pending.prepared.chunks.len();
        self.collection = Some(collection);
        self.pending.push(pending);
        self.finish(Finished::Done {
            files_done,
            file,
            outcome: None,
        });
    }

    fn is_due(&self, options: &LibraryOptions) -> bool {
        self.chunks >= options.batch_chunks
            || self.pending.len() >= options.batch_documents
            || self.since.is_some_and(|since| since.elapsed() >= BATCH_AGE)
    }
}

/// A document ready to be written: extracted, chunked and embedded.
struct Prepared {
    title: String,
    kind: Kind,
    digest: String,
    size_bytes: u64,
    chunks: Vec<Chunk>,
    vectors: Vec<Vec<f32>>,
    /// The embedding model's version, when its engine said.
    embedding_version: Option<String>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // An unfinished rusqlite transaction rolls back when dropped, so a panic while holding a
    // connection leaves it sound.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Collection names appear in URLs and in the `model` field of chat requests.
pub fn validate_collection_name(name: &str) -> Result<()> {
    let invalid = |reason: &str| {
        Err(Error::InvalidName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() || name.len() > 64 {
        return invalid("use 1 to 64 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return invalid("start with a letter or digit");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return invalid("use only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

/// The text a chunk is embedded and BM25-indexed as: its heading path (or the document's
/// title) before its own text, so a chunk deep in a section still matches the section's topic.
fn retrieval_text(title: &str, chunk: &Chunk) -> String {
    let context = if chunk.heading_path.is_empty() {
        title.to_string()
    } else {
        chunk.heading_path.join(" > ")
    };
    if chunk.text.starts_with(&context) {
        chunk.text.clone()
    } else {
        format!("{context}\n{}", chunk.text)
    }
}

fn open_connection(path: &Path) -> Result<Connection> {
    let open_error = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let conn = Connection::open(path).map_err(open_error)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
    let found: i64 = schema::user_version(&conn).map_err(open_error)?;
    if found > schema::known_version() {
        return Err(Error::NewerSchema {
            path: path.to_path_buf(),
            found,
            known: schema::known_version(),
        });
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
        .map_err(open_error)?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "SQLite refused WAL journal mode");
    }
    // As in the store: a committed transaction survives kill -9 (it is in the WAL); a power
    // cut may lose the last ones, which the next ingest of the folder simply redoes.
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(open_error)?;
    conn.pragma_update(None, "foreign_keys", true)
        .map_err(open_error)?;
    Ok(conn)
}

impl Library {
    /// Opens (creating if needed) the library in `dir`, migrates its database, and repairs
    /// what an interrupted ingest left behind.
    pub fn open(dir: &Path, options: LibraryOptions) -> Result<Library> {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let db_path = dir.join("rag.sqlite");
        let mut db = open_connection(&db_path)?;
        schema::migrate(&mut db, &db_path)?;
        let reader = open_connection(&db_path)?;
        let index = TextIndex::open(&dir.join("index"))?;
        let inner = Inner {
            dir: dir.to_path_buf(),
            options,
            db: Mutex::new(db),
            reader: Mutex::new(reader),
            index,
            vectors: Mutex::new(HashMap::new()),
            writer_turn: tokio::sync::Mutex::new(()),
        };
        inner.repair()?;
        Ok(Library {
            inner: Arc::new(inner),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn options(&self) -> &LibraryOptions {
        &self.inner.options
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Inner) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || work(&inner))
            .await
            .map_err(|error| Error::Corrupt(format!("library worker failed: {error}")))?
    }

    pub async fn create_collection(&self, name: &str) -> Result<Collection> {
        validate_collection_name(name)?;
        let _turn = self.inner.writer_turn.lock().await;
        let name = name.to_string();
        self.blocking(move |inner| {
            let db = lock(&inner.db);
            let created = db.execute(
                "INSERT INTO collections (name, created_ms) VALUES (?1, ?2) \
                 ON CONFLICT (name) DO NOTHING",
                params![name, now_ms()],
            )?;
            if created == 0 {
                return Err(Error::CollectionExists(name));
            }
            drop(db);
            inner
                .list_collections()?
                .into_iter()
                .find(|c| c.name == name)
                .ok_or(Error::UnknownCollection(name))
        })
        .await
    }

    pub async fn list_collections(&self) -> Result<Vec<Collection>> {
        self.blocking(|inner| inner.list_collections()).await
    }

    /// Deletes a collection with all its documents.
    pub async fn delete_collection(&self, name: &str) -> Result<()> {
        let _turn = self.inner.writer_turn.lock().await;
        let name = name.to_string();
        self.blocking(move |inner| {
            let collection = inner.collection(&name)?;
            let mut db = lock(&inner.db);
            let tx = db.transaction()?;
            let doc_ids: Vec<i64> = tx
                .prepare("SELECT id FROM documents WHERE collection_id = ?1")?
                .query_map([collection.id], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            tx.execute("DELETE FROM collections WHERE id = ?1", [collection.id])?;
            tx.commit()?;
            drop(db);
            lock(&inner.vectors).remove(&collection.id);
            // Index entries of rows that are gone are invisible already; a failure here is
            // finished by the repair at the next open.
            if let Err(error) = inner.index.delete_documents(&doc_ids) {
                tracing::warn!(%error, "deleting a collection's index entries failed; the next open removes them");
            }
            Ok(())
        })
        .await
    }

    pub async fn list_documents(&self, collection: &str) -> Result<Vec<Document>> {
        let collection = collection.to_string();
        self.blocking(move |inner| {
            let collection = inner.collection(&collection)?;
            let db = lock(&inner.reader);
            let mut statement = db.prepare(
                "SELECT id, source, origin, folder_root, title, kind, digest, size_bytes, \
                 chunk_count, created_ms, committed_ms FROM documents \
                 WHERE collection_id = ?1 AND committed = 1 ORDER BY source",
            )?;
            let rows = statement.query_map([collection.id], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, Option<String>>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, String>(5)?,
                    row.get::<_, String>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, i64>(8)?,
                    row.get::<_, i64>(9)?,
                    row.get::<_, Option<i64>>(10)?,
                ))
            })?;
            let mut documents = Vec::new();
            for row in rows {
                let (
                    id,
                    source,
                    origin,
                    folder_root,
                    title,
                    kind,
                    digest,
                    size,
                    chunks,
                    created,
                    committed,
                ) = row?;
                documents.push(Document {
                    id,
                    collection: collection.name.clone(),
                    origin: Origin::parse(&origin).ok_or_else(|| {
                        Error::Corrupt(format!("document {id}: unknown origin {origin:?}"))
                    })?,
                    kind: Kind::parse(&kind).ok_or_else(|| {
                        Error::Corrupt(format!("document {id}: unknown kind {kind:?}"))
                    })?,
                    source,
                    folder_root,
                    title,
                    digest,
                    size_bytes: size.max(0) as u64,
                    chunk_count: chunks.max(0) as usize,
                    created_ms: created,
                    committed_ms: committed,
                });
            }
            Ok(documents)
        })
        .await
    }

    pub async fn delete_document(&self, collection: &str, id: i64) -> Result<()> {
        let _turn = self.inner.writer_turn.lock().await;
        let collection = collection.to_string();
        self.blocking(move |inner| {
            let collection = inner.collection(&collection)?;
            let deleted = lock(&inner.db).execute(
                "DELETE FROM documents WHERE id = ?1 AND collection_id = ?2 AND committed = 1",
                params![id, collection.id],
            )?;
            if deleted == 0 {
                return Err(Error::UnknownDocument {
                    collection: collection.name,
                    id,
                });
            }
            inner.forget_documents(collection.id, &[id]);
            Ok(())
        })
        .await
    }

    /// Ingests one file from the file system (its absolute path is its source).
    pub async fn ingest_file(
        &self,
        collection: &str,
        path: &Path,
        embed: &dyn Embed,
    ) -> Result<IngestOutcome> {
        let path = std::fs::canonicalize(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let _turn = self.inner.writer_turn.lock().await;
        let bytes = self.read_file(&path).await?;
        let source = Source {
            source: path.to_string_lossy().into_owned(),
            origin: Origin::File,
            folder_root: None,
        };
        self.ingest_locked(collection, source, bytes, embed).await
    }

    /// Ingests an upload; `name` (a file name, which decides the kind) is its source, so a
    /// second upload of the same name replaces the first.
    pub async fn ingest_bytes(
        &self,
        collection: &str,
        name: &str,
        bytes: Vec<u8>,
        embed: &dyn Embed,
    ) -> Result<IngestOutcome> {
        if name.trim().is_empty() || name.len() > 1024 || name.chars().any(char::is_control) {
            return Err(Error::InvalidRequest(format!(
                "invalid document name {name:?}: give a file name of 1 to 1024 characters, \
                 without control characters (its extension decides how it is read)"
            )));
        }
        let _turn = self.inner.writer_turn.lock().await;
        let source = Source {
            source: name.to_string(),
            origin: Origin::Upload,
            folder_root: None,
        };
        self.ingest_locked(collection, source, bytes, embed).await
    }

    /// Ingests every supported file under `root` (recursively; hidden files and folders are
    /// skipped, symbolic links followed, loops reported). Unchanged files are skipped by
    /// digest, changed ones replaced, and documents an earlier ingest of this same root found
    /// whose file is gone are deleted. A file that fails is reported (in `progress` and the
    /// result) and the others go on; a failure of the database, the index or the embedding
    /// engine stops the ingest with that error, keeping every file finished before it.
    pub async fn ingest_folder(
        &self,
        collection: &str,
        root: &Path,
        embed: &dyn Embed,
        mut progress: impl FnMut(IngestEvent) + Send,
    ) -> Result<FolderReport> {
        let _turn = self.inner.writer_turn.lock().await;
        let name = collection.to_string();
        self.blocking(move |inner| inner.collection(&name).map(drop))
            .await?;
        let root = std::fs::canonicalize(root).map_err(|error| Error::Folder {
            path: root.to_path_buf(),
            reason: format!("cannot open it: {error} (is the drive mounted?)"),
        })?;
        if !root.is_dir() {
            return Err(Error::Folder {
                path: root,
                reason: "not a folder".to_string(),
            });
        }
        let root_text = root.to_string_lossy().into_owned();
        let walk_root = root.clone();
        let walked = tokio::task::spawn_blocking(move || walk(&walk_root))
            .await
            .map_err(|error| Error::Corrupt(format!("folder walk failed: {error}")))?;

        let mut report = FolderReport {
            root: root_text.clone(),
            files_total: walked.files.len(),
            ..FolderReport::default()
        };
        progress(IngestEvent::Started {
            root: root_text.clone(),
            files_total: walked.files.len(),
        });
        for error in &walked.errors {
            report.failed += 1;
            report.errors.push(error.clone());
            progress(IngestEvent::FileError {
                files_done: 0,
                files_total: walked.files.len(),
                file: error.file.clone(),
                message: error.message.clone(),
            });
        }

        let mut seen: HashSet<String> = HashSet::new();
        let mut batch = Batch::default();
        let model = embed.model().to_string();
        for (done, path) in walked.files.iter().enumerate() {
            let file = path.to_string_lossy().into_owned();
            seen.insert(file.clone());
            let source = Source {
                source: file.clone(),
                origin: Origin::Folder,
                folder_root: Some(root_text.clone()),
            };
            let result = match self.read_file(path).await {
                Ok(bytes) => self.prepare(collection, source, bytes, embed).await,
                Err(error) => Err(error),
            };
            let files_done = done + 1;
            match result {
                Ok(Step::Unchanged(outcome)) => batch.finish(Finished::Done {
                    files_done,
                    file,
                    outcome: Some(outcome),
                }),
                Ok(Step::Ready(collection, pending)) => {
                    batch.add(collection, *pending, files_done, file)
                }
                Err(error) if error.is_per_document() => batch.finish(Finished::Failed {
                    files_done,
                    file,
                    message: error.to_string(),
                }),
                Err(error) => {
                    // Keep the files finished before it, as a one-by-one ingest would have.
                    if let Err(commit_error) = self
                        .commit_batch(&mut batch, &model, &mut report, &mut progress)
                        .await
                    {
                        tracing::warn!(error = %commit_error, "committing the files finished before a failure failed too");
                    }
                    return Err(error);
                }
            }
            if batch.is_due(&self.inner.options) {
                self.commit_batch(&mut batch, &model, &mut report, &mut progress)
                    .await?;
            }
        }
        self.commit_batch(&mut batch, &model, &mut report, &mut progress)
            .await?;

        let name = collection.to_string();
        let unreadable = walked.unreadable_dirs.clone();
        let deleted = self
            .blocking(move |inner| inner.delete_gone(&name, &root_text, &seen, &unreadable))
            .await?;
        for source in deleted {
            report.deleted += 1;
            progress(IngestEvent::Deleted { source });
        }
        Ok(report)
    }

    /// Reads a file, refusing one over the size limit before reading it.
    async fn read_file(&self, path: &Path) -> Result<Vec<u8>> {
        let io_error = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let metadata = tokio::fs::metadata(path).await.map_err(io_error)?;
        let limit = self.inner.options.extract.max_file_bytes;
        if metadata.len() > limit {
            return Err(Error::Document {
                document: path.to_string_lossy().into_owned(),
                error: ExtractError::TooLarge {
                    size: metadata.len(),
                    limit,
                },
            });
        }
        tokio::fs::read(path).await.map_err(io_error)
    }

    /// One document, with the writer's turn held by the caller.
    async fn ingest_locked(
        &self,
        collection: &str,
        source: Source,
        bytes: Vec<u8>,
        embed: &dyn Embed,
    ) -> Result<IngestOutcome> {
        let (collection, pending) = match self.prepare(collection, source, bytes, embed).await? {
            Step::Unchanged(outcome) => return Ok(outcome),
            Step::Ready(collection, pending) => (collection, pending),
        };
        let model = embed.model().to_string();
        self.blocking(move |inner| inner.commit_documents(&collection, vec![*pending], &model))
            .await?
            .pop()
            .ok_or_else(|| Error::Corrupt("a commit of one document reported none".to_string()))
    }

    /// Commits a folder ingest's batch and reports its files, in order.
    async fn commit_batch(
        &self,
        batch: &mut Batch,
        model: &str,
        report: &mut FolderReport,
        progress: &mut (impl FnMut(IngestEvent) + Send),
    ) -> Result<()> {
        let batch = std::mem::take(batch);
        let mut outcomes = match batch.collection {
            Some(collection) if !batch.pending.is_empty() => {
                let model = model.to_string();
                let pending = batch.pending;
                self.blocking(move |inner| inner.commit_documents(&collection, pending, &model))
                    .await?
            }
            _ => Vec::new(),
        }
        .into_iter();
        for finished in batch.finished {
            match finished {
                Finished::Done {
                    files_done,
                    file,
                    outcome,
                } => {
                    let outcome = outcome.or_else(|| outcomes.next()).ok_or_else(|| {
                        Error::Corrupt("a batch commit reported fewer documents".to_string())
                    })?;
                    match outcome.status {
                        IngestStatus::Added => report.added += 1,
                        IngestStatus::Replaced => report.replaced += 1,
                        IngestStatus::Unchanged => report.unchanged += 1,
                    }
                    if outcome.status != IngestStatus::Unchanged {
                        report.chunks_added += outcome.chunks;
                    }
                    progress(IngestEvent::Progress {
                        files_done,
                        files_total: report.files_total,
                        chunks: report.chunks_added,
                        file,
                        status: outcome.status,
                    });
                }
                Finished::Failed {
                    files_done,
                    file,
                    message,
                } => {
                    report.failed += 1;
                    report.errors.push(FileError {
                        file: file.clone(),
                        message: message.clone(),
                    });
                    progress(IngestEvent::FileError {
                        files_done,
                        files_total: report.files_total,
                        file,
                        message,
                    });
                }
            }
        }
        Ok(())
    }

    /// Reads, cuts and embeds one document (writing nothing but, for an unchanged one, its
    /// origin), with the writer's turn held by the caller.
    async fn prepare(
        &self,
        collection: &str,
        source: Source,
        bytes: Vec<u8>,
        embed: &dyn Embed,
    ) -> Result<Step> {
        let name = collection.to_string();
        let model = embed.model().to_string();
        let source_name = source.source.clone();
        let origin = source.origin;
        let folder_root = source.folder_root.clone();
        // Reading and cutting write nothing.
        let step = self
            .blocking(move |inner| {
                let collection = inner.collection(&name)?;
                if let (Some(recorded), Some(dimension)) = (&collection.model, collection.dimension)
                {
                    if *recorded != model {
                        return Err(Error::EmbeddingMismatch {
                            collection: collection.name.clone(),
                            recorded_model: recorded.clone(),
                            recorded_dimension: dimension,
                            model,
                            dimension: None,
                        });
                    }
                }
                let digest = hex(&Sha256::digest(&bytes));
                let visible = inner.visible_document(collection.id, &source_name)?;
                if let Some((id, old_digest, chunks, title)) = &visible {
                    if *old_digest == digest {
                        inner.record_origin(*id, origin, folder_root.as_deref())?;
                        return Ok(Step::Unchanged(IngestOutcome {
                            document_id: *id,
                            source: source_name,
                            title: title.clone(),
                            status: IngestStatus::Unchanged,
                            chunks: *chunks,
                        }));
                    }
                }
                let extracted =
                    extract(&source_name, &bytes, &inner.options.extract).map_err(|error| {
                        Error::Document {
                            document: source_name.clone(),
                            error,
                        }
                    })?;
                let chunks = chunk(&extracted, &inner.options.chunk);
                if chunks.is_empty() {
                    return Err(Error::Document {
                        document: source_name,
                        error: ExtractError::Empty,
                    });
                }
                Ok(Step::Ready(
                    collection,
                    Box::new(Pending {
                        source,
                        replaces: visible.map(|(id, ..)| id),
                        prepared: Prepared {
                            title: extracted.title,
                            kind: extracted.kind,
                            digest,
                            size_bytes: bytes.len() as u64,
                            chunks,
                            vectors: Vec::new(),
                            embedding_version: None,
                        },
                    }),
                ))
            })
            .await?;
        let Step::Ready(collection, mut pending) = step else {
            return Ok(step);
        };
        let prepared = &mut pending.prepared;
        let texts: Vec<String> = prepared
            .chunks
            .iter()
            .map(|chunk| retrieval_text(&prepared.title, chunk))
            .collect();
        (prepared.vectors, prepared.embedding_version) =
            self.embed_all(&collection, embed, texts).await?;
        Ok(Step::Ready(collection, pending))
    }

    /// Embeds in batches, normalising, and checks one dimension throughout (and the
    /// collection's, once it has one).
    async fn embed_all(
        &self,
        collection: &CollectionRow,
        embed: &dyn Embed,
        texts: Vec<String>,
    ) -> Result<(Vec<Vec<f32>>, Option<String>)> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut version: Option<Option<String>> = None;
        for batch in texts.chunks(self.inner.options.embed_batch_size.max(1)) {
            let Embedded {
                vectors: answered,
                version: answered_version,
            } = embed.embed_versioned(batch.to_vec()).await?;
            // Checked at the first batch, so a mismatch costs one request, not a document.
            collection.check_version(embed.model(), answered_version.as_deref())?;
            match &version {
                Some(first) if *first != answered_version => {
                    return Err(Error::Embed(format!(
                        "the model's version changed during one document ({}, then {}): a new \
                         version was promoted; ingest again",
                        first.as_deref().unwrap_or("unknown"),
                        answered_version.as_deref().unwrap_or("unknown")
                    )));
                }
                Some(_) => {}
                None => version = Some(answered_version),
            }
            if answered.len() != batch.len() {
                return Err(Error::Embed(format!(
                    "asked for {} vectors, got {}",
                    batch.len(),
                    answered.len()
                )));
            }
            vectors.extend(answered);
        }
        let dimension = vectors.first().map_or(0, Vec::len);
        if dimension == 0 || vectors.iter().any(|v| v.len() != dimension) {
            return Err(Error::Embed(
                "the vectors are empty or of different lengths".to_string(),
            ));
        }
        if let (Some(recorded), Some(recorded_dimension)) =
            (&collection.model, collection.dimension)
        {
            if recorded_dimension != dimension {
                return Err(Error::EmbeddingMismatch {
                    collection: collection.name.clone(),
                    recorded_model: recorded.clone(),
                    recorded_dimension,
                    model: embed.model().to_string(),
                    dimension: Some(dimension),
                });
            }
        }
        for vector in &mut vectors {
            normalise(vector);
        }
        Ok((vectors, version.flatten()))
    }

    /// Ranked chunks for a query. `embed` is needed for the dense and hybrid modes (it must be
    /// the collection's model).
    pub async fn search(
        &self,
        request: &SearchRequest,
        embed: Option<&dyn Embed>,
    ) -> Result<Vec<Hit>> {
        let query = request.query.trim().to_string();
        if query.is_empty() {
            return Err(Error::InvalidRequest(
                "query is empty: give some words to search for".to_string(),
            ));
        }
        if request.k == 0 || request.k > MAX_K {
            return Err(Error::InvalidRequest(format!(
                "k is {}: ask for 1 to {MAX_K} results",
                request.k
            )));
        }
        let name = request.collection.clone();
        let filters = request.filters.clone();
        let (collection, allowed) = self
            .blocking(move |inner| {
                let collection = inner.collection(&name)?;
                let allowed = inner.allowed_documents(collection.id, &filters)?;
                Ok((collection, allowed))
            })
            .await?;

        let wants_dense = request.mode.wants_dense();
        let query_vector = match (wants_dense, &collection.model, collection.dimension) {
            (false, _, _) | (true, None, _) | (true, _, None) => None,
            (true, Some(recorded), Some(dimension)) => {
                let embed = embed.ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "{:?} search needs the embedding engine, which this server was not given; use mode \"bm25\"",
                        request.mode
                    ))
                })?;
                if embed.model() != recorded {
                    return Err(Error::EmbeddingMismatch {
                        collection: collection.name.clone(),
                        recorded_model: recorded.clone(),
                        recorded_dimension: dimension,
                        model: embed.model().to_string(),
                        dimension: None,
                    });
                }
                let Embedded {
                    mut vectors,
                    version,
                } = embed.embed_versioned(vec![query.clone()]).await?;
                collection.check_version(embed.model(), version.as_deref())?;
                let mut vector = vectors
                    .pop()
                    .filter(|_| vectors.is_empty())
                    .ok_or_else(|| Error::Embed("asked for 1 vector, got another count".into()))?;
                if vector.len() != dimension {
                    return Err(Error::EmbeddingMismatch {
                        collection: collection.name.clone(),
                        recorded_model: recorded.clone(),
                        recorded_dimension: dimension,
                        model: embed.model().to_string(),
                        dimension: Some(vector.len()),
                    });
                }
                normalise(&mut vector);
                Some(vector)
            }
        };

        let k = request.k;
        let mode = request.mode;
        self.blocking(move |inner| {
            let candidates = k.max(MIN_CANDIDATES);
            // Fetched deeper than needed: entries of documents being ingested or just
            // replaced are dropped below.
            let slack = 20;
            let bm25 = if !mode.wants_bm25() {
                Vec::new()
            } else {
                inner
                    .index
                    .search(collection.id, &query, allowed.as_ref(), candidates + slack)?
            };
            let dense = match &query_vector {
                Some(vector) => {
                    let set = inner.vector_set(&collection)?;
                    let set = set.read().unwrap_or_else(|p| p.into_inner());
                    set.top_k(vector, candidates, |doc| {
                        allowed.as_ref().is_none_or(|a| a.contains(&doc))
                    })
                }
                None => Vec::new(),
            };
            let mut wanted: Vec<i64> = bm25.iter().map(|(c, ..)| *c).collect();
            wanted.extend(dense.iter().map(|(c, ..)| *c));
            let rows = inner.visible_chunks(collection.id, &wanted)?;
            let visible = |list: &[(i64, i64, f32)]| -> Vec<(i64, f32)> {
                list.iter()
                    .filter(|(c, ..)| rows.contains_key(c))
                    .take(candidates)
                    .map(|(c, _, s)| (*c, *s))
                    .collect()
            };
            let bm25 = visible(&bm25);
            let dense = visible(&dense);
            let rank_of = |list: &[(i64, f32)]| -> HashMap<i64, usize> {
                list.iter()
                    .enumerate()
                    .map(|(i, (c, _))| (*c, i + 1))
                    .collect()
            };
            let (bm25_ranks, dense_ranks) = (rank_of(&bm25), rank_of(&dense));
            let ranked: Vec<(i64, f32)> = match mode {
                Mode::Bm25 => bm25,
                Mode::Dense => dense,
                Mode::Hybrid => relative_score_fusion(&bm25, &dense),
                Mode::HybridRrf => {
                    let bm25_ids: Vec<i64> = bm25.iter().map(|(c, _)| *c).collect();
                    let dense_ids: Vec<i64> = dense.iter().map(|(c, _)| *c).collect();
                    reciprocal_rank_fusion(&[&bm25_ids, &dense_ids])
                }
            };
            Ok(ranked
                .into_iter()
                .take(k)
                .filter_map(|(chunk_id, score)| {
                    let row = rows.get(&chunk_id)?;
                    let mut hit = row.clone();
                    hit.score = score;
                    hit.bm25_rank = bm25_ranks.get(&chunk_id).copied();
                    hit.dense_rank = dense_ranks.get(&chunk_id).copied();
                    Some(hit)
                })
                .collect())
        })
        .await
    }

    /// Checks that every visible document is whole: as many chunk rows, vectors and index
    /// entries as its recorded chunk count, no uncommitted rows, no index entries of
    /// documents that are not visible. Returns the problems found (none when sound).
    pub async fn verify(&self) -> Result<Vec<String>> {
        let _turn = self.inner.writer_turn.lock().await;
        self.blocking(|inner| inner.verify()).await
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

struct Walked {
    files: Vec<PathBuf>,
    errors: Vec<FileError>,
    unreadable_dirs: Vec<PathBuf>,
}

/// The files under `root`, sorted, skipping hidden entries (a leading dot), following
/// symbolic links (a removable drive's folder may be one) and reporting loops.
fn walk(root: &Path) -> Walked {
    let mut walked = Walked {
        files: Vec::new(),
        errors: Vec::new(),
        unreadable_dirs: Vec::new(),
    };
    let entries = walkdir::WalkDir::new(root)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|entry| {
            entry.depth() == 0 || !entry.file_name().to_string_lossy().starts_with('.')
        });
    for entry in entries {
        match entry {
            Ok(entry) if entry.file_type().is_file() => walked.files.push(entry.into_path()),
            Ok(_) => {}
            Err(error) => {
                let path = error.path().unwrap_or(root).to_path_buf();
                let message = match error.loop_ancestor() {
                    Some(ancestor) => {
                        format!("symbolic link loop back to {}; skipped", ancestor.display())
                    }
                    None => format!(
                        "cannot read it: {}",
                        error
                            .io_error()
                            .map_or_else(|| error.to_string(), ToString::to_string)
                    ),
                };
                // Whatever was under an unreadable folder is not known to be gone.
                walked.unreadable_dirs.push(path.clone());
                walked.errors.push(FileError {
                    file: path.to_string_lossy().into_owned(),
                    message,
                });
            }
        }
    }
    walked
}

/// One document's vectors: its id and (chunk id, vector) rows.
type DocumentVectors = (i64, Vec<(i64, Vec<f32>)>);

/// The rows of `count` chunks (their ids bound as parameters) whose document is visible in the
/// collection. CROSS JOIN fixes the join order, chunks first by primary key: given the choice,
/// SQLite walks the collection's documents through their partial index instead (it guesses an
/// equality picks ~10 rows), which took 28 ms at 10k documents against 0.4 ms.
fn visible_chunks_sql(collection_id: i64, count: usize) -> String {
    let placeholders = vec!["?"; count].join(",");
    format!(
        "SELECT c.id, c.document_id, c.text, c.heading_path, c.page, c.char_start, \
         c.char_end, d.source, d.title, d.kind FROM chunks c \
         CROSS JOIN documents d ON d.id = c.document_id \
         WHERE d.committed = 1 AND d.collection_id = {collection_id} AND c.id IN ({placeholders})"
    )
}

impl Inner {
    fn collection(&self, name: &str) -> Result<CollectionRow> {
        let db = lock(&self.reader);
        db.query_row(
            "SELECT id, name, embedding_model, embedding_dimension, embedding_version \
             FROM collections WHERE name = ?1",
            [name],
            |row| {
                Ok(CollectionRow {
                    id: row.get(0)?,
                    name: row.get(1)?,
                    model: row.get(2)?,
                    dimension: row.get::<_, Option<i64>>(3)?.map(|d| d.max(0) as usize),
                    version: row.get(4)?,
                })
            },
        )
        .optional()?
        .ok_or_else(|| Error::UnknownCollection(name.to_string()))
    }

    fn list_collections(&self) -> Result<Vec<Collection>> {
        let db = lock(&self.reader);
        let mut statement = db.prepare(
            "SELECT c.name, count(d.id), coalesce(sum(d.chunk_count), 0), c.embedding_model, \
             c.embedding_dimension, c.created_ms, c.embedding_version FROM collections c \
             LEFT JOIN documents d ON d.collection_id = c.id AND d.committed = 1 \
             GROUP BY c.id ORDER BY c.name",
        )?;
        let rows = statement.query_map([], |row| {
            Ok(Collection {
                name: row.get(0)?,
                documents: row.get::<_, i64>(1)?.max(0) as u64,
                chunks: row.get::<_, i64>(2)?.max(0) as u64,
                embedding_model: row.get(3)?,
                embedding_dimension: row.get::<_, Option<i64>>(4)?.map(|d| d.max(0) as usize),
                embedding_version: row.get(6)?,
                created_ms: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The visible version of a source: (id, digest, chunk count, title).
    fn visible_document(
        &self,
        collection_id: i64,
        source: &str,
    ) -> Result<Option<(i64, String, usize, String)>> {
        Ok(lock(&self.db)
            .query_row(
                "SELECT id, digest, chunk_count, title FROM documents \
                 WHERE collection_id = ?1 AND source = ?2 AND committed = 1",
                params![collection_id, source],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get::<_, i64>(2)?.max(0) as usize,
                        row.get(3)?,
                    ))
                },
            )
            .optional()?)
    }

    /// An unchanged document found again through another way in (a file first ingested
    /// alone, now found in a folder) belongs to the latest one, so folder deletion tracks it.
    fn record_origin(&self, id: i64, origin: Origin, folder_root: Option<&str>) -> Result<()> {
        lock(&self.db).execute(
            "UPDATE documents SET origin = ?2, folder_root = ?3 WHERE id = ?1 \
             AND (origin IS NOT ?2 OR folder_root IS NOT ?3)",
            params![id, origin.as_str(), folder_root],
        )?;
        Ok(())
    }

    /// Writes documents hidden, adds them to the search index with one commit, then makes them
    /// all visible (replacing their old versions) in one transaction: after a crash either the
    /// whole batch is visible or none of it. Outcomes come in the order of `batch`.
    fn commit_documents(
        &self,
        collection: &CollectionRow,
        batch: Vec<Pending>,
        model: &str,
    ) -> Result<Vec<IngestOutcome>> {
        let mut hidden: Vec<(i64, Vec<i64>)> = Vec::with_capacity(batch.len());
        let discard = |hidden: &[(i64, Vec<i64>)]| -> Result<()> {
            let db = lock(&self.db);
            for (doc_id, _) in hidden {
                db.execute("DELETE FROM documents WHERE id = ?1", [doc_id])?;
            }
            Ok(())
        };
        for pending in &batch {
            match self.insert_hidden(collection, &pending.source, &pending.prepared, model) {
                Ok(ids) => hidden.push(ids),
                Err(error) => {
                    discard(&hidden)?;
                    return Err(error);
                }
            }
        }
        let bodies: Vec<Vec<String>> = batch
            .iter()
            .map(|pending| {
                let prepared = &pending.prepared;
                prepared
                    .chunks
                    .iter()
                    .map(|chunk| retrieval_text(&prepared.title, chunk))
                    .collect()
            })
            .collect();
        let indexed: Vec<IndexedDocument<'_>> = batch
            .iter()
            .zip(&hidden)
            .zip(&bodies)
            .map(|((pending, (doc_id, chunk_ids)), bodies)| IndexedDocument {
                doc_id: *doc_id,
                kind: pending.prepared.kind.as_str(),
                chunks: chunk_ids
                    .iter()
                    .zip(bodies)
                    .map(|(&chunk_id, body)| IndexedChunk { chunk_id, body })
                    .collect(),
            })
            .collect();
        if let Err(error) = self.index.add_documents(collection.id, &indexed) {
            // Leave nothing half-written: the hidden rows go; the index's uncommitted
            // additions are dropped (a committed-but-failed reload is repaired at open).
            if let Err(rollback) = self.index.rollback() {
                tracing::warn!(error = %rollback, "rolling back the search index failed");
            }
            discard(&hidden)?;
            return Err(error);
        }
        drop(indexed);
        let visible: Vec<(i64, Option<i64>)> = hidden
            .iter()
            .zip(&batch)
            .map(|((doc_id, _), pending)| (*doc_id, pending.replaces))
            .collect();
        self.make_visible(&visible)?;
        let replaced: Vec<i64> = batch.iter().filter_map(|p| p.replaces).collect();
        let mut outcomes = Vec::with_capacity(batch.len());
        {
            let sets = lock(&self.vectors);
            let set = sets.get(&collection.id);
            let mut set = set.map(|set| set.write().unwrap_or_else(|p| p.into_inner()));
            if let Some(set) = set.as_mut() {
                set.remove_documents(&replaced);
            }
            for (pending, (doc_id, chunk_ids)) in batch.into_iter().zip(hidden) {
                let rows: Vec<(i64, Vec<f32>)> = chunk_ids
                    .into_iter()
                    .zip(pending.prepared.vectors)
                    .collect();
                if let Some(set) = set.as_mut() {
                    set.add_document(doc_id, &rows);
                }
                outcomes.push(IngestOutcome {
                    document_id: doc_id,
                    source: pending.source.source,
                    title: pending.prepared.title,
                    status: if pending.replaces.is_some() {
                        IngestStatus::Replaced
                    } else {
                        IngestStatus::Added
                    },
                    chunks: rows.len(),
                });
            }
        }
        if let Err(error) = self.index.delete_documents(&replaced) {
            tracing::warn!(%error, documents = ?replaced, "deleting replaced documents' index entries failed; the next open removes them");
        }
        Ok(outcomes)
    }

    /// One transaction: the document (`committed = 0`), its chunks and vectors, and the
    /// collection's embedding model if this is its first ingest.
    fn insert_hidden(
        &self,
        collection: &CollectionRow,
        source: &Source,
        prepared: &Prepared,
        model: &str,
    ) -> Result<(i64, Vec<i64>)> {
        let mut db = lock(&self.db);
        let tx = db.transaction()?;
        let dimension = prepared.vectors.first().map_or(0, Vec::len) as i64;
        tx.execute(
            "UPDATE collections SET embedding_model = ?2, embedding_dimension = ?3 \
             WHERE id = ?1 AND embedding_model IS NULL",
            params![collection.id, model, dimension],
        )?;
        if let Some(version) = &prepared.embedding_version {
            // The first version learnt is the collection's; checked again here, inside the
            // transaction, since the row read before embedding may predate another ingest's.
            tx.execute(
                "UPDATE collections SET embedding_version = ?2 \
                 WHERE id = ?1 AND embedding_version IS NULL",
                params![collection.id, version],
            )?;
            let recorded: Option<String> = tx.query_row(
                "SELECT embedding_version FROM collections WHERE id = ?1",
                [collection.id],
                |row| row.get(0),
            )?;
            CollectionRow {
                version: recorded,
                ..collection.clone()
            }
            .check_version(model, Some(version))?;
        }
        tx.execute(
            "INSERT INTO documents (collection_id, source, origin, folder_root, title, kind, \
             digest, size_bytes, chunk_count, committed, created_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 0, ?10)",
            params![
                collection.id,
                source.source,
                source.origin.as_str(),
                source.folder_root,
                prepared.title,
                prepared.kind.as_str(),
                prepared.digest,
                prepared.size_bytes as i64,
                prepared.chunks.len() as i64,
                now_ms()
            ],
        )?;
        let doc_id = tx.last_insert_rowid();
        let mut chunk_ids = Vec::with_capacity(prepared.chunks.len());
        {
            let mut insert_chunk = tx.prepare(
                "INSERT INTO chunks (document_id, ordinal, text, heading_path, page, \
                 char_start, char_end) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            let mut insert_vector =
                tx.prepare("INSERT INTO vectors (chunk_id, vector) VALUES (?1, ?2)")?;
            for (chunk, vector) in prepared.chunks.iter().zip(&prepared.vectors) {
                let heading_path = serde_json::to_string(&chunk.heading_path)
                    .map_err(|e| Error::Corrupt(format!("heading path: {e}")))?;
                insert_chunk.execute(params![
                    doc_id,
                    chunk.ordinal as i64,
                    chunk.text,
                    heading_path,
                    chunk.page,
                    chunk.char_range.start as i64,
                    chunk.char_range.end as i64
                ])?;
                let chunk_id = tx.last_insert_rowid();
                insert_vector.execute(params![chunk_id, to_bytes(vector)])?;
                chunk_ids.push(chunk_id);
            }
        }
        tx.commit()?;
        Ok((doc_id, chunk_ids))
    }

    /// One transaction: the replaced versions go, the new ones become visible, each given as
    /// (new id, id of the version it replaces).
    fn make_visible(&self, documents: &[(i64, Option<i64>)]) -> Result<()> {
        let mut db = lock(&self.db);
        let tx = db.transaction()?;
        let now = now_ms();
        for (doc_id, replaces) in documents {
            if let Some(old) = replaces {
                tx.execute("DELETE FROM documents WHERE id = ?1", [old])?;
            }
            tx.execute(
                "UPDATE documents SET committed = 1, committed_ms = ?2 WHERE id = ?1",
                params![doc_id, now],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// After a document's rows are deleted: its vectors leave the cache, its index entries
    /// the index (a failure there is harmless, see `repair`).
    fn forget_documents(&self, collection_id: i64, doc_ids: &[i64]) {
        if let Some(set) = lock(&self.vectors).get(&collection_id) {
            set.write()
                .unwrap_or_else(|p| p.into_inner())
                .remove_documents(doc_ids);
        }
        if let Err(error) = self.index.delete_documents(doc_ids) {
            tracing::warn!(%error, "deleting index entries failed; the next open removes them");
        }
    }

    /// Deletes the documents a folder ingest of `root` made whose files were not seen now,
    /// except under folders that could not be read. Returns their sources.
    fn delete_gone(
        &self,
        collection: &str,
        root: &str,
        seen: &HashSet<String>,
        unreadable: &[PathBuf],
    ) -> Result<Vec<String>> {
        let collection = self.collection(collection)?;
        let mut db = lock(&self.db);
        let tx = db.transaction()?;
        let candidates: Vec<(i64, String)> = tx
            .prepare(
                "SELECT id, source FROM documents WHERE collection_id = ?1 AND folder_root = ?2 \
                 AND origin = 'folder' AND committed = 1",
            )?
            .query_map(params![collection.id, root], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let gone: Vec<(i64, String)> = candidates
            .into_iter()
            .filter(|(_, source)| {
                !seen.contains(source)
                    && !unreadable
                        .iter()
                        .any(|dir| Path::new(source).starts_with(dir))
            })
            .collect();
        for (id, _) in &gone {
            tx.execute("DELETE FROM documents WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        drop(db);
        let ids: Vec<i64> = gone.iter().map(|(id, _)| *id).collect();
        if !ids.is_empty() {
            self.forget_documents(collection.id, &ids);
        }
        Ok(gone.into_iter().map(|(_, source)| source).collect())
    }

    /// The documents a search may return, when filters narrow it.
    fn allowed_documents(
        &self,
        collection_id: i64,
        filters: &Filters,
    ) -> Result<Option<HashSet<i64>>> {
        if filters.is_empty() {
            return Ok(None);
        }
        let db = lock(&self.reader);
        let mut statement = db.prepare(
            "SELECT id, source, kind FROM documents WHERE collection_id = ?1 AND committed = 1",
        )?;
        let rows = statement.query_map([collection_id], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
            ))
        })?;
        let mut allowed = HashSet::new();
        for row in rows {
            let (id, source, kind) = row?;
            let prefix_ok = filters
                .source_prefix
                .as_ref()
                .is_none_or(|prefix| source.starts_with(prefix.as_str()));
            let kind_ok = filters.kind.is_none_or(|k| k.as_str() == kind);
            let id_ok = filters
                .document_ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&id));
            if prefix_ok && kind_ok && id_ok {
                allowed.insert(id);
            }
        }
        Ok(Some(allowed))
    }

    /// The visible chunks among `chunk_ids`, as hits without scores or ranks.
    fn visible_chunks(&self, collection_id: i64, chunk_ids: &[i64]) -> Result<HashMap<i64, Hit>> {
        let mut out = HashMap::new();
        if chunk_ids.is_empty() {
            return Ok(out);
        }
        let db = lock(&self.reader);
        let unique: Vec<i64> = chunk_ids
            .iter()
            .copied()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for batch in unique.chunks(500) {
            let mut statement = db.prepare(&visible_chunks_sql(collection_id, batch.len()))?;
            let rows = statement.query_map(rusqlite::params_from_iter(batch), |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, i64>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<u32>>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, i64>(6)?,
                    row.get::<_, String>(7)?,
                    row.get::<_, String>(8)?,
                    row.get::<_, String>(9)?,
                ))
            })?;
            for row in rows {
                let (id, document_id, text, heading_path, page, start, end, source, title, kind) =
                    row?;
                let heading_path: Vec<String> = serde_json::from_str(&heading_path)
                    .map_err(|e| Error::Corrupt(format!("chunk {id}: heading path: {e}")))?;
                let location = Location {
                    page,
                    heading_path,
                    char_start: start.max(0) as usize,
                    char_end: end.max(0) as usize,
                };
                out.insert(
                    id,
                    Hit {
                        chunk_id: id,
                        document_id,
                        document: source,
                        title,
                        kind: Kind::parse(&kind).ok_or_else(|| {
                            Error::Corrupt(format!("document {document_id}: unknown kind {kind:?}"))
                        })?,
                        location_label: location.label(),
                        location,
                        text,
                        score: 0.0,
                        bm25_rank: None,
                        dense_rank: None,
                    },
                );
            }
        }
        Ok(out)
    }

    /// The collection's vectors, loaded from the database on first use. The cache lock is
    /// held while loading, and ingests update a loaded set under the same lock after their
    /// commit, so a set never misses a committed document (and `add_document` skips one it
    /// already read).
    fn vector_set(&self, collection: &CollectionRow) -> Result<Arc<RwLock<VectorSet>>> {
        let mut sets = lock(&self.vectors);
        if let Some(set) = sets.get(&collection.id) {
            return Ok(set.clone());
        }
        let dimension = collection.dimension.unwrap_or(0);
        let mut set = VectorSet::new(dimension);
        {
            let db = lock(&self.reader);
            let mut statement = db.prepare(
                "SELECT c.document_id, v.chunk_id, v.vector FROM vectors v \
                 JOIN chunks c ON c.id = v.chunk_id JOIN documents d ON d.id = c.document_id \
                 WHERE d.collection_id = ?1 AND d.committed = 1 ORDER BY c.document_id, c.ordinal",
            )?;
            let mut rows = statement.query([collection.id])?;
            let mut current: Option<DocumentVectors> = None;
            while let Some(row) = rows.next()? {
                let doc_id: i64 = row.get(0)?;
                let chunk_id: i64 = row.get(1)?;
                let bytes: Vec<u8> = row.get(2)?;
                let vector = from_bytes(&bytes)
                    .filter(|v| v.len() == dimension)
                    .ok_or_else(|| {
                        Error::Corrupt(format!(
                            "chunk {chunk_id}: its vector is {} bytes, not {dimension} floats",
                            bytes.len()
                        ))
                    })?;
                match &mut current {
                    Some((id, rows)) if *id == doc_id => rows.push((chunk_id, vector)),
                    _ => {
                        if let Some((id, rows)) = current.take() {
                            set.add_document(id, &rows);
                        }
                        current = Some((doc_id, vec![(chunk_id, vector)]));
                    }
                }
            }
            if let Some((id, rows)) = current {
                set.add_document(id, &rows);
            }
        }
        let set = Arc::new(RwLock::new(set));
        sets.insert(collection.id, set.clone());
        Ok(set)
    }

    /// Finishes what a crash interrupted: uncommitted documents' rows are deleted, and index
    /// entries of documents that are not visible (uncommitted, replaced, deleted) are too.
    fn repair(&self) -> Result<()> {
        let removed = lock(&self.db).execute("DELETE FROM documents WHERE committed = 0", [])?;
        let visible: HashSet<i64> = {
            let db = lock(&self.db);
            let mut statement = db.prepare("SELECT id FROM documents")?;
            let ids = statement
                .query_map([], |row| row.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            ids
        };
        let orphans: Vec<i64> = self
            .index
            .document_ids()?
            .into_iter()
            .filter(|id| !visible.contains(id))
            .collect();
        if removed > 0 || !orphans.is_empty() {
            tracing::info!(
                uncommitted_documents = removed,
                index_orphans = orphans.len(),
                "repaired the RAG library after an interrupted ingest"
            );
        }
        self.index.delete_documents(&orphans)
    }

    fn verify(&self) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        let db = lock(&self.db);
        let uncommitted: i64 = db.query_row(
            "SELECT count(*) FROM documents WHERE committed = 0",
            [],
            |r| r.get(0),
        )?;
        if uncommitted > 0 {
            problems.push(format!("{uncommitted} uncommitted documents"));
        }
        let mut statement = db.prepare(
            "SELECT d.id, d.source, d.chunk_count, \
             (SELECT count(*) FROM chunks c WHERE c.document_id = d.id), \
             (SELECT count(*) FROM vectors v JOIN chunks c ON c.id = v.chunk_id WHERE c.document_id = d.id) \
             FROM documents d WHERE d.committed = 1",
        )?;
        let rows: Vec<(i64, String, i64, i64, i64)> = statement
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?
            .collect::<rusqlite::Result<_>>()?;
        let mut visible = HashSet::new();
        for (id, source, expected, chunks, vectors) in rows {
            visible.insert(id);
            let indexed = self.index.count_chunks(id)? as i64;
            if chunks != expected || vectors != expected || indexed != expected || expected == 0 {
                problems.push(format!(
                    "document {id} ({source}): {expected} chunks recorded, {chunks} chunk rows, \
                     {vectors} vectors, {indexed} index entries"
                ));
            }
        }
        for id in self.index.document_ids()? {
            if !visible.contains(&id) {
                problems.push(format!(
                    "index entries of document {id}, which is not visible"
                ));
            }
        }
        Ok(problems)
    }
}

#[cfg(test)]
mod tests;
