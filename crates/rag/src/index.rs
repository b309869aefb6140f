//! The BM25 side: a tantivy index in `DIR/index/` with one tantivy document per chunk.
//! tantivy's commit is atomic (its meta.json is swapped), so after a crash the index is at its
//! last commit; which of its documents count is decided by SQLite's `committed` flag, never by
//! the index alone.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use tantivy::collector::TopDocs;
use tantivy::directory::MmapDirectory;
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery, TermSetQuery};
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, FAST, INDEXED, STORED,
    STRING,
};
use tantivy::{doc, IndexReader, IndexWriter, ReloadPolicy, TantivyDocument, Term};

use crate::{Error, Result};

/// The tokenizer of `body`: tantivy's built-in English analyzer (lower case, stemmed), so
/// "indexing" finds "indexed".
const BODY_TOKENIZER: &str = "en_stem";

/// tantivy needs at least 15 MB per indexing thread; one thread is plenty for one writer that
/// commits after every document, and keeps ingest from taking both cores of a small box.
const WRITER_MEMORY: usize = 50_000_000;

#[derive(Clone, Copy)]
struct Fields {
    chunk_id: Field,
    doc_id: Field,
    collection: Field,
    kind: Field,
    body: Field,
}

fn schema() -> (Schema, Fields) {
    let mut builder = Schema::builder();
    let body_options = TextOptions::default().set_indexing_options(
        TextFieldIndexing::default()
            .set_tokenizer(BODY_TOKENIZER)
            .set_index_option(IndexRecordOption::WithFreqsAndPositions),
    );
    let fields = Fields {
        chunk_id: builder.add_u64_field("chunk_id", INDEXED | STORED | FAST),
        doc_id: builder.add_u64_field("doc_id", INDEXED | STORED | FAST),
        // The collection's id (as text: a STRING term), not its name: ids are never reused,
        // names may be.
        collection: builder.add_text_field("collection", STRING),
        kind: builder.add_text_field("kind", STRING),
        body: builder.add_text_field("body", body_options),
    };
    (builder.build(), fields)
}

/// One chunk as the index sees it.
pub(crate) struct IndexedChunk<'a> {
    pub chunk_id: i64,
    pub body: &'a str,
}

/// One document's chunks, as the index sees them.
pub(crate) struct IndexedDocument<'a> {
    pub doc_id: i64,
    pub kind: &'a str,
    pub chunks: Vec<IndexedChunk<'a>>,
}

pub(crate) struct TextIndex {
    index: tantivy::Index,
    reader: IndexReader,
    writer: Mutex<IndexWriter>,
    fields: Fields,
}

impl TextIndex {
    pub(crate) fn open(dir: &Path) -> Result<TextIndex> {
        let open_error = |reason: String| Error::IndexOpen {
            path: dir.to_path_buf(),
            reason,
        };
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let (schema, fields) = schema();
        let directory = MmapDirectory::open(dir).map_err(|e| open_error(e.to_string()))?;
        let index = tantivy::Index::open_or_create(directory, schema)
            .map_err(|e| open_error(e.to_string()))?;
        let writer = index
            .writer_with_num_threads(1, WRITER_MEMORY)
            .map_err(|e| match e {
                tantivy::TantivyError::LockFailure(..) => open_error(
                    "another process holds its writer lock (is a second `flowers engine rag` \
                     running on this data directory?)"
                        .to_string(),
                ),
                other => open_error(other.to_string()),
            })?;
        // Reloaded by hand after each commit: a search right after an ingest sees it.
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()
            .map_err(|e: tantivy::TantivyError| open_error(e.to_string()))?;
        Ok(TextIndex {
            index,
            reader,
            writer: Mutex::new(writer),
            fields,
        })
    }

    fn writer(&self) -> MutexGuard<'_, IndexWriter> {
        // A panic while holding it leaves nothing half-applied: uncommitted additions are
        // rolled back or committed by the next caller, and SQLite decides visibility anyway.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds documents' chunks and commits once: a commit (a new segment, fsynced) costs far more
    /// than the additions, so a folder ingest hands over its documents in batches.
    pub(crate) fn add_documents(
        &self,
        collection_id: i64,
        documents: &[IndexedDocument<'_>],
    ) -> Result<()> {
        let mut writer = self.writer();
        let f = self.fields;
        let collection = collection_id.to_string();
        for document in documents {
            for chunk in &document.chunks {
                writer.add_document(doc!(
                    f.chunk_id => chunk.chunk_id as u64,
                    f.doc_id => document.doc_id as u64,
                    f.collection => collection.as_str(),
                    f.kind => document.kind,
                    f.body => chunk.body,
                ))?;
            }
        }
        writer.commit()?;
        drop(writer);
        self.reader.reload()?;
        Ok(())
    }

    /// Deletes every chunk of these documents and commits.
    pub(crate) fn delete_documents(&self, doc_ids: &[i64]) -> Result<()> {
        if doc_ids.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer();
        for &id in doc_ids {
            writer.delete_term(Term::from_field_u64(self.fields.doc_id, id as u64));
        }
        writer.commit()?;
        drop(writer);
        self.reader.reload()?;
        Ok(())
    }

    /// Drops additions not yet committed (after a failure between add and commit).
    pub(crate) fn rollback(&self) -> Result<()> {
        self.writer().rollback()?;
        Ok(())
    }

    /// BM25 top `limit` chunks of a collection for `query`, as (chunk id, doc id, score). The
    /// query is plain text: it goes through the body's analyzer and becomes an OR of term
    /// queries, so no query syntax exists to get wrong. `only_documents` narrows to those
    /// documents (metadata filters).
    pub(crate) fn search(
        &self,
        collection_id: i64,
        query: &str,
        only_documents: Option<&HashSet<i64>>,
        limit: usize,
    ) -> Result<Vec<(i64, i64, f32)>> {
        let f = self.fields;
        let mut analyzer = self.index.tokenizer_for_field(f.body)?;
        let mut terms: Vec<Term> = Vec::new();
        let mut stream = analyzer.token_stream(query);
        while let Some(token) = stream.next() {
            let term = Term::from_field_text(f.body, &token.text);
            if !terms.contains(&term) {
                terms.push(term);
            }
        }
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let body: Vec<(Occur, Box<dyn Query>)> = terms
            .into_iter()
            .map(|term| {
                let query: Box<dyn Query> =
                    Box::new(TermQuery::new(term, IndexRecordOption::WithFreqs));
                (Occur::Should, query)
            })
            .collect();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = vec![
            (Occur::Must, Box::new(BooleanQuery::new(body))),
            (
                Occur::Must,
                Box::new(TermQuery::new(
                    Term::from_field_text(f.collection, &collection_id.to_string()),
                    IndexRecordOption::Basic,
                )),
            ),
        ];
        if let Some(documents) = only_documents {
            if documents.is_empty() {
                return Ok(Vec::new());
            }
            clauses.push((
                Occur::Must,
                Box::new(TermSetQuery::new(
                    documents
                        .iter()
                        .map(|&id| Term::from_field_u64(f.doc_id, id as u64)),
                )),
            ));
        }
        let query = BooleanQuery::new(clauses);
        let searcher = self.reader.searcher();
        let top = searcher.search(&query, &TopDocs::with_limit(limit).order_by_score())?;
        let mut out = Vec::with_capacity(top.len());
        for (score, address) in top {
            let document: TantivyDocument = searcher.doc(address)?;
            let read = |field| {
                document
                    .get_first(field)
                    .and_then(|value| value.as_u64())
                    .ok_or_else(|| Error::Corrupt(format!("search index entry without {field:?}")))
            };
            out.push((read(f.chunk_id)? as i64, read(f.doc_id)? as i64, score));
        }
        Ok(out)
    }

    /// How many live index entries each of these documents has (for checks and repair).
    pub(crate) fn count_chunks(&self, doc_id: i64) -> Result<usize> {
        let searcher = self.reader.searcher();
        let query = TermQuery::new(
            Term::from_field_u64(self.fields.doc_id, doc_id as u64),
            IndexRecordOption::Basic,
        );
        Ok(searcher.search(&query, &tantivy::collector::Count)?)
    }

    /// Every document id with live entries in the index.
    pub(crate) fn document_ids(&self) -> Result<HashSet<i64>> {
        let searcher = self.reader.searcher();
        let mut ids = HashSet::new();
        for segment in searcher.segment_readers() {
            let column = segment.fast_fields().u64("doc_id")?;
            let alive = segment.alive_bitset();
            for doc in 0..segment.max_doc() {
                if alive.is_some_and(|a| !a.is_alive(doc)) {
                    continue;
                }
                if let Some(id) = column.first(doc) {
                    ids.insert(id as i64);
                }
            }
        }
        Ok(ids)
    }
}
