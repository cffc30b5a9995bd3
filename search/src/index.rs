//! The index: opening, writing with version checks, committing in the background, searching.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tantivy::aggregation::agg_req::Aggregations;
use tantivy::collector::sort_key::SortByStaticFastValue;
use tantivy::collector::{Collector, Count, TopDocs};
use tantivy::columnar::{Column, StrColumn};
use tantivy::query::{BooleanQuery, Occur, Query, TermQuery};
use tantivy::schema::{IndexRecordOption, Schema, Term, Value};
use tantivy::{
    DocAddress, DocSet, IndexReader, IndexWriter, Order, ReloadPolicy, Searcher, TantivyDocument,
};

use crate::expand::Expander;
use crate::query::{QueryBuilder, filter, filters};
use crate::schema::{self, ATTRIBUTE_SEPARATOR, Fields, SCHEMA_VERSION, group_of};
use crate::{
    DEFAULT_PAGE_SIZE, Hit, IndexedProduct, MAX_PAGE_SIZE, MAX_QUERY_CHARS, MAX_RESULT_WINDOW,
    SearchError, SearchQuery, SearchResults, Sort, facets, token,
};

/// The file that records the schema version the index was built with. It is written when a
/// rebuild completes, so an index whose first build was interrupted is rebuilt again.
const VERSION_FILE: &str = "shopmesh-search.version";

/// How `progress` is called during a rebuild: every this many products, and at the end.
const PROGRESS_EVERY: u64 = 1_000;

/// How the index writes.
#[derive(Clone, Debug)]
pub struct IndexOptions {
    /// Changes are committed (made searchable) this often while there are any.
    pub commit_interval: Duration,
    /// Indexing threads (a rebuild uses them all; single changes use one at a time).
    pub writer_threads: usize,
    /// The writer's memory budget, shared by its threads. It is used while documents are being
    /// indexed, mostly by rebuilds; a larger budget means fewer segments to merge.
    pub writer_memory_bytes: usize,
}

impl Default for IndexOptions {
    fn default() -> IndexOptions {
        IndexOptions {
            commit_interval: Duration::from_millis(500),
            writer_threads: std::thread::available_parallelism()
                .map(|n| n.get().min(4))
                .unwrap_or(1),
            writer_memory_bytes: 256 << 20,
        }
    }
}

/// The product index of one catalog replica. `Send + Sync`: share it behind an `Arc`.
///
/// Writes (`upsert`, `delete`, `rebuild`, `flush`) are serialised by one lock; searches never
/// wait for them. Changes become searchable when committed: by a background thread every
/// [`IndexOptions::commit_interval`] (500 ms by default), by [`Index::flush`], and when the
/// index is dropped.
pub struct Index {
    shared: Arc<Shared>,
    committer: Option<Committer>,
}

struct Committer {
    stop: Sender<()>,
    thread: JoinHandle<()>,
}

struct Shared {
    dir: PathBuf,
    fields: Fields,
    index: tantivy::Index,
    reader: IndexReader,
    writer_threads: usize,
    writer_memory: usize,
    writer: Mutex<WriterState>,
    expander: Expander,
    aggregations: Aggregations,
    /// Live products in the committed state.
    live: AtomicU64,
    /// Per searcher generation: the default locale groups of products lacking a locale group.
    fallbacks: Mutex<FallbackCache>,
}

#[derive(Default)]
struct FallbackCache {
    generation: u64,
    by_group: HashMap<&'static str, Vec<String>>,
}

struct WriterState {
    /// `None` only while a rebuild swaps it for a fresh one.
    writer: Option<IndexWriter<TantivyDocument>>,
    /// Versions written since the last commit (`false`: deleted), which searches cannot see yet.
    pending: HashMap<String, (i64, bool)>,
}

impl WriterState {
    fn writer(&mut self) -> Result<&mut IndexWriter<TantivyDocument>, SearchError> {
        self.writer
            .as_mut()
            .ok_or_else(|| SearchError::Index("the index writer could not be reopened".to_owned()))
    }
}

impl Index {
    /// Opens the index in `dir`, creating it when missing, with the default options.
    ///
    /// The flag says the index must be rebuilt with [`Index::rebuild`]: it was missing, corrupt,
    /// built under another schema version, or its last rebuild did not finish. Such an index is
    /// opened empty (its old files are removed).
    pub fn open(dir: &Path) -> Result<(Index, bool), SearchError> {
        Index::open_with(dir, IndexOptions::default())
    }

    /// [`Index::open`] with options.
    pub fn open_with(dir: &Path, options: IndexOptions) -> Result<(Index, bool), SearchError> {
        fs::create_dir_all(dir)?;
        let recorded = fs::read_to_string(dir.join(VERSION_FILE))
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        let existing = if recorded == Some(SCHEMA_VERSION) {
            match open_existing(dir) {
                Ok(index) => Some(index),
                Err(error) => {
                    tracing::warn!(%error, "search index unreadable; it will be rebuilt");
                    None
                }
            }
        } else {
            if recorded.is_some() {
                tracing::info!(
                    recorded,
                    current = SCHEMA_VERSION,
                    "search index schema changed; it will be rebuilt"
                );
            }
            None
        };
        let needs_rebuild = existing.is_none();
        let index = match existing {
            Some(index) => index,
            None => {
                clear(dir)?;
                let index = tantivy::Index::create_in_dir(dir, schema::build())?;
                schema::register_analyzers(index.tokenizers());
                index
            }
        };
        let shared = Shared::new(dir, index, &options)?;
        let shared = Arc::new(shared);
        let committer = Committer::start(Arc::clone(&shared), options.commit_interval)?;
        Ok((
            Index {
                shared,
                committer: Some(committer),
            },
            needs_rebuild,
        ))
    }

    /// Replaces the whole content with `products`, calling `progress` with the number indexed
    /// so far every 1,000 products and at the end; returns that number. Searches see the old
    /// content until the new one is complete; writes wait for the rebuild. On error the old
    /// content stays. Product ids must be unique.
    pub fn rebuild(
        &self,
        products: impl IntoIterator<Item = IndexedProduct>,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, SearchError> {
        let shared = &self.shared;
        let mut state = shared.lock_writer()?;
        let indexed = (|| {
            state.writer()?.delete_all_documents()?;
            let mut done = 0u64;
            for product in products {
                check(&product)?;
                state.writer()?.add_document(shared.document(&product))?;
                done += 1;
                if done.is_multiple_of(PROGRESS_EVERY) {
                    progress(done);
                }
            }
            Ok::<u64, SearchError>(done)
        })();
        let done = match indexed {
            Ok(done) => done,
            Err(error) => {
                state.writer()?.rollback()?;
                return Err(error);
            }
        };
        shared.commit(&mut state)?;
        // Let the merges the rebuild started finish, so searches start on few segments.
        if let Some(writer) = state.writer.take() {
            let merged = writer.wait_merging_threads();
            state.writer = Some(shared.new_writer()?);
            merged?;
            shared.reader.reload()?;
        }
        fs::write(shared.dir.join(VERSION_FILE), format!("{SCHEMA_VERSION}\n"))?;
        if !done.is_multiple_of(PROGRESS_EVERY) || done == 0 {
            progress(done);
        }
        Ok(done)
    }

    /// Indexes a product, unless the index holds a newer version of it (or its deletion at the
    /// same version or later).
    pub fn upsert(&self, product: IndexedProduct) -> Result<(), SearchError> {
        check(&product)?;
        let shared = &self.shared;
        let mut state = shared.lock_writer()?;
        if let Some((version, live)) = shared.current_version(&state, &product.id)?
            && (product.version < version || (product.version == version && !live))
        {
            return Ok(());
        }
        let writer = state.writer()?;
        writer.delete_term(Term::from_field_text(shared.fields.id, &product.id));
        writer.add_document(shared.document(&product))?;
        state
            .pending
            .insert(product.id.clone(), (product.version, true));
        Ok(())
    }

    /// Removes a product, unless the index holds a newer version of it. The deletion is kept
    /// (as a tombstone) so an older upsert arriving late does not bring the product back.
    pub fn delete(&self, id: &str, version: i64) -> Result<(), SearchError> {
        if id.is_empty() {
            return Err(SearchError::Index("a product id is empty".to_owned()));
        }
        let shared = &self.shared;
        let mut state = shared.lock_writer()?;
        if let Some((indexed, _)) = shared.current_version(&state, id)?
            && version < indexed
        {
            return Ok(());
        }
        let fields = &shared.fields;
        let writer = state.writer()?;
        writer.delete_term(Term::from_field_text(fields.id, id));
        let mut tombstone = TantivyDocument::default();
        tombstone.add_text(fields.id, id);
        tombstone.add_bool(fields.live, false);
        tombstone.add_i64(fields.version, version);
        writer.add_document(tombstone)?;
        state.pending.insert(id.to_owned(), (version, false));
        Ok(())
    }

    /// Commits now, so every change so far is searchable when this returns.
    pub fn flush(&self) -> Result<(), SearchError> {
        let mut state = self.shared.lock_writer()?;
        self.shared.commit(&mut state)
    }

    /// Searches.
    pub fn search(&self, query: &SearchQuery) -> Result<SearchResults, SearchError> {
        self.shared.search(query)
    }

    /// The number of searchable products.
    pub fn len(&self) -> u64 {
        self.shared.live.load(Ordering::Relaxed)
    }

    /// True when no product is searchable.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The size of the index's files on disk, in bytes.
    pub fn size_on_disk(&self) -> Result<u64, SearchError> {
        let mut total = 0;
        for entry in fs::read_dir(&self.shared.dir)? {
            let metadata = entry?.metadata()?;
            if metadata.is_file() {
                total += metadata.len();
            }
        }
        Ok(total)
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        if let Some(committer) = self.committer.take() {
            drop(committer.stop);
            if committer.thread.join().is_err() {
                tracing::error!("the search index committer panicked");
            }
        }
    }
}

impl Committer {
    /// Commits pending changes every `interval`, and once more when the index is dropped.
    fn start(shared: Arc<Shared>, interval: Duration) -> Result<Committer, SearchError> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("search-commit".to_owned())
            .spawn(move || {
                loop {
                    let last = match stopped.recv_timeout(interval) {
                        Err(RecvTimeoutError::Timeout) | Ok(()) => false,
                        Err(RecvTimeoutError::Disconnected) => true,
                    };
                    let committed = shared
                        .lock_writer()
                        .and_then(|mut state| shared.commit_if_pending(&mut state));
                    if let Err(error) = committed {
                        tracing::error!(%error, "search index commit failed");
                    }
                    if last {
                        break;
                    }
                }
            })?;
        Ok(Committer { stop, thread })
    }
}

/// Opens an index written under the current schema version, or says why it cannot be used.
fn open_existing(dir: &Path) -> Result<tantivy::Index, SearchError> {
    let index = tantivy::Index::open_in_dir(dir)?;
    if index.schema() != schema::build() {
        return Err(SearchError::Index(
            "the schema differs from this version's".to_owned(),
        ));
    }
    let damaged = index.validate_checksum()?;
    if !damaged.is_empty() {
        return Err(SearchError::Index(format!(
            "{} files fail their checksum",
            damaged.len()
        )));
    }
    schema::register_analyzers(index.tokenizers());
    // Opening a reader opens every segment.
    index.reader()?;
    Ok(index)
}

/// Removes the files of an index (ours and tantivy's) from `dir`, leaving anything else.
fn clear(dir: &Path) -> Result<(), SearchError> {
    let ours = |name: &str| {
        matches!(
            name,
            VERSION_FILE | "meta.json" | ".managed.json" | ".tantivy-meta.lock"
        ) || name.starts_with(".tantivy-")
            || (name.len() > 33
                && name.as_bytes()[32] == b'.'
                && name[..32].bytes().all(|b| b.is_ascii_hexdigit()))
    };
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if entry.file_type()?.is_file() && name.to_str().is_some_and(ours) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// A product the index cannot hold is a bug of the caller.
fn check(product: &IndexedProduct) -> Result<(), SearchError> {
    if product.id.is_empty() {
        return Err(SearchError::Index("a product id is empty".to_owned()));
    }
    Ok(())
}

impl Shared {
    fn new(
        dir: &Path,
        index: tantivy::Index,
        options: &IndexOptions,
    ) -> Result<Shared, SearchError> {
        let schema: Schema = index.schema();
        let fields = Fields::from_schema(&schema)?;
        let writer_threads = options.writer_threads.max(1);
        // tantivy refuses less than 15 MB a thread.
        let writer_memory = options.writer_memory_bytes.max(writer_threads * (16 << 20));
        let writer = index.writer_with_num_threads(writer_threads, writer_memory)?;
        let reader = index
            .reader_builder()
            .reload_policy(ReloadPolicy::Manual)
            .try_into()?;
        let aggregations = facets::request()
            .map_err(|error| SearchError::Index(format!("facet request: {error}")))?;
        let shared = Shared {
            dir: dir.to_owned(),
            fields,
            index,
            reader,
            writer_threads,
            writer_memory,
            writer: Mutex::new(WriterState {
                writer: Some(writer),
                pending: HashMap::new(),
            }),
            expander: Expander::new(),
            aggregations,
            live: AtomicU64::new(0),
            fallbacks: Mutex::new(FallbackCache::default()),
        };
        shared.count_live()?;
        Ok(shared)
    }

    fn new_writer(&self) -> Result<IndexWriter<TantivyDocument>, SearchError> {
        Ok(self
            .index
            .writer_with_num_threads(self.writer_threads, self.writer_memory)?)
    }

    fn lock_writer(&self) -> Result<MutexGuard<'_, WriterState>, SearchError> {
        self.writer
            .lock()
            .map_err(|_| SearchError::Index("the index writer was poisoned".to_owned()))
    }

    fn commit_if_pending(&self, state: &mut WriterState) -> Result<(), SearchError> {
        if state.pending.is_empty() {
            return Ok(());
        }
        self.commit(state)
    }

    /// Commits, then reloads the reader before forgetting the pending versions, so version
    /// checks always see either the pending write or the committed one.
    fn commit(&self, state: &mut WriterState) -> Result<(), SearchError> {
        state.writer()?.commit()?;
        self.reader.reload()?;
        state.pending.clear();
        self.count_live()
    }

    fn count_live(&self) -> Result<(), SearchError> {
        let searcher = self.reader.searcher();
        let live = TermQuery::new(
            Term::from_field_bool(self.fields.live, true),
            IndexRecordOption::Basic,
        );
        let count = searcher.search(&live, &Count)?;
        self.live.store(count as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The version of `id` the index holds (pending or committed), and whether it is live.
    fn current_version(
        &self,
        state: &WriterState,
        id: &str,
    ) -> Result<Option<(i64, bool)>, SearchError> {
        if let Some(pending) = state.pending.get(id) {
            return Ok(Some(*pending));
        }
        let searcher = self.reader.searcher();
        let term = Term::from_field_text(self.fields.id, id);
        let mut newest: Option<(i64, bool)> = None;
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.fields.id)?;
            let Some(mut postings) = inverted.read_postings(&term, IndexRecordOption::Basic)?
            else {
                continue;
            };
            let versions = segment.fast_fields().i64("version")?;
            let live = segment.fast_fields().bool("live")?;
            let alive = segment.alive_bitset();
            let mut doc = postings.doc();
            while doc != tantivy::TERMINATED {
                if alive.is_none_or(|alive| alive.is_alive(doc)) {
                    let version = versions.first(doc).unwrap_or(i64::MIN);
                    if newest.is_none_or(|(newest, _)| version > newest) {
                        newest = Some((version, live.first(doc).unwrap_or(false)));
                    }
                }
                doc = postings.advance();
            }
        }
        Ok(newest)
    }

    fn document(&self, product: &IndexedProduct) -> TantivyDocument {
        let fields = &self.fields;
        let mut doc = TantivyDocument::default();
        doc.add_text(fields.id, &product.id);
        doc.add_bool(fields.live, true);
        doc.add_i64(fields.version, product.version);
        doc.add_text(fields.sku, &product.sku);
        let default_group = group_of(&product.default_locale);
        doc.add_text(fields.default_group, default_group);
        // Stored for the hits: the default locale and the titles.
        doc.add_text(
            fields.titles,
            serde_json::to_string(&(&product.default_locale, &product.titles)).unwrap_or_default(),
        );

        // Each locale group the product has a title in gets that title and the description in
        // the same group, or the default locale's description when it has none.
        let mut groups: BTreeMap<&'static str, (Vec<&str>, Vec<&str>)> = BTreeMap::new();
        for (locale, title) in &product.titles {
            groups.entry(group_of(locale)).or_default().0.push(title);
        }
        for (locale, description) in &product.descriptions {
            if let Some(group) = groups.get_mut(group_of(locale)) {
                group.1.push(description);
            }
        }
        let default_description = product
            .descriptions
            .get(&product.default_locale)
            .or_else(|| {
                product
                    .descriptions
                    .iter()
                    .find(|(locale, _)| group_of(locale) == default_group)
                    .map(|(_, description)| description)
            });
        for (group, (titles, descriptions)) in &groups {
            doc.add_text(fields.groups, group);
            let text = fields.group(group);
            for title in titles {
                doc.add_text(text.title, title);
            }
            if descriptions.is_empty() {
                if let Some(description) = default_description {
                    doc.add_text(text.description, description);
                }
            } else {
                for description in descriptions {
                    doc.add_text(text.description, description);
                }
            }
        }

        for title in product.titles.values() {
            doc.add_text(fields.words, title);
        }
        for (name, value) in &product.attributes {
            doc.add_text(fields.attribute_text, value);
            doc.add_text(fields.words, value);
            doc.add_text(
                fields.attribute,
                format!("{name}{ATTRIBUTE_SEPARATOR}{value}"),
            );
        }
        for category in &product.category_path {
            doc.add_text(fields.category, category);
        }
        doc.add_text(
            fields.category_leaf,
            product.category_path.last().map_or("", String::as_str),
        );
        doc.add_i64(fields.price, product.price_minor);
        doc.add_text(fields.currency, &product.currency);
        doc.add_i64(fields.stock, i64::from(product.stock));
        doc.add_bool(fields.in_stock, product.stock > 0);
        let rating = if product.rating_average.is_finite() {
            product.rating_average
        } else {
            0.0
        };
        doc.add_f64(fields.rating, rating);
        doc.add_i64(fields.rating_count, i64::from(product.rating_count));
        doc.add_i64(fields.created, product.created_at_ms);
        doc
    }

    /// The default locale groups to search, besides `group`, for products without a title in
    /// `group`; computed once per searcher generation.
    fn fallbacks(
        &self,
        searcher: &Searcher,
        group: &'static str,
    ) -> Result<Vec<String>, SearchError> {
        let generation = searcher.generation().generation_id();
        {
            let cache = self
                .fallbacks
                .lock()
                .map_err(|_| SearchError::Index("the fallback cache was poisoned".to_owned()))?;
            if cache.generation == generation
                && let Some(found) = cache.by_group.get(group)
            {
                return Ok(found.clone());
            }
        }
        let mut defaults = std::collections::BTreeSet::new();
        for segment in searcher.segment_readers() {
            let inverted = segment.inverted_index(self.fields.default_group)?;
            let mut stream = inverted.terms().stream()?;
            while stream.advance() {
                if let Ok(default) = std::str::from_utf8(stream.key()) {
                    defaults.insert(default.to_owned());
                }
            }
        }
        let mut found = Vec::new();
        for default in defaults {
            if default == group {
                continue;
            }
            let lacking = BooleanQuery::new(vec![
                (
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_bool(self.fields.live, true),
                        IndexRecordOption::Basic,
                    )) as Box<dyn Query>,
                ),
                (
                    Occur::Must,
                    Box::new(TermQuery::new(
                        Term::from_field_text(self.fields.default_group, &default),
                        IndexRecordOption::Basic,
                    )),
                ),
                (
                    Occur::MustNot,
                    Box::new(TermQuery::new(
                        Term::from_field_text(self.fields.groups, group),
                        IndexRecordOption::Basic,
                    )),
                ),
            ]);
            if searcher.search(&lacking, &Count)? > 0 {
                found.push(default);
            }
        }
        let mut cache = self
            .fallbacks
            .lock()
            .map_err(|_| SearchError::Index("the fallback cache was poisoned".to_owned()))?;
        if cache.generation != generation {
            cache.generation = generation;
            cache.by_group.clear();
        }
        cache.by_group.insert(group, found.clone());
        Ok(found)
    }

    fn search(&self, query: &SearchQuery) -> Result<SearchResults, SearchError> {
        if query.q.chars().count() > MAX_QUERY_CHARS {
            return Err(SearchError::invalid(
                "q",
                format!("longer than {MAX_QUERY_CHARS} characters"),
            ));
        }
        if query.page_size > MAX_PAGE_SIZE {
            return Err(SearchError::invalid(
                "page_size",
                format!("more than {MAX_PAGE_SIZE}"),
            ));
        }
        if let (Some(min), Some(max)) = (query.min_price, query.max_price)
            && min > max
        {
            return Err(SearchError::invalid("min_price", "above max_price"));
        }
        if query.min_rating.is_some_and(|rating| !rating.is_finite()) {
            return Err(SearchError::invalid("min_rating", "not a number"));
        }
        let offset = match &query.page_token {
            Some(page_token) => token::decode(query, page_token)?,
            None => 0,
        };
        let page_size = if query.page_size == 0 {
            DEFAULT_PAGE_SIZE
        } else {
            query.page_size
        };

        let searcher = self.reader.searcher();
        let group = group_of(&query.locale);
        let tokenizers = self.index.tokenizers();
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = filters(&self.fields, tokenizers, query)
            .into_iter()
            .map(|query| (Occur::Must, filter(query)))
            .collect();
        let builder = QueryBuilder {
            fields: &self.fields,
            searcher: &searcher,
            tokenizers,
            expander: &self.expander,
        };
        let has_text = !query.q.trim().is_empty();
        if has_text {
            let fallbacks = self.fallbacks(&searcher, group)?;
            if let Some(text) = builder.text(&query.q, group, &fallbacks)? {
                clauses.push((Occur::Must, text));
            }
        }
        let tantivy_query = BooleanQuery::new(clauses);

        let range = TopDocs::for_doc_range(offset..offset + page_size);
        let aggregations = facets::collector(&self.aggregations);
        let sort = match query.sort {
            Sort::Relevance if !has_text => Sort::Newest,
            sort => sort,
        };
        let (addresses, total, aggregated) = match sort {
            Sort::Relevance => run(
                &searcher,
                &tantivy_query,
                range.order_by_score(),
                aggregations,
            )?,
            Sort::PriceAsc => run(
                &searcher,
                &tantivy_query,
                range.order_by_fast_field::<i64>("price", Order::Asc),
                aggregations,
            )?,
            Sort::PriceDesc => run(
                &searcher,
                &tantivy_query,
                range.order_by_fast_field::<i64>("price", Order::Desc),
                aggregations,
            )?,
            Sort::Rating => run(
                &searcher,
                &tantivy_query,
                range.order_by((
                    (
                        SortByStaticFastValue::<f64>::for_field("rating"),
                        Order::Desc,
                    ),
                    (
                        SortByStaticFastValue::<i64>::for_field("rating_count"),
                        Order::Desc,
                    ),
                )),
                aggregations,
            )?,
            Sort::Newest => run(
                &searcher,
                &tantivy_query,
                range.order_by_fast_field::<i64>("created", Order::Desc),
                aggregations,
            )?,
        };
        let hits = self.hits(&searcher, &addresses, &query.locale)?;
        let total = total as u64;
        let next = offset + page_size;
        let next_page_token = ((next as u64) < total && next <= MAX_RESULT_WINDOW)
            .then(|| token::encode(query, next));
        Ok(SearchResults {
            hits,
            total,
            facets: facets::read(&aggregated),
            next_page_token,
        })
    }

    /// The hits of a page, from fast fields and the stored titles.
    fn hits(
        &self,
        searcher: &Searcher,
        addresses: &[DocAddress],
        locale: &str,
    ) -> Result<Vec<Hit>, SearchError> {
        let mut columns: HashMap<u32, HitColumns> = HashMap::new();
        let mut hits = Vec::with_capacity(addresses.len());
        for address in addresses {
            let columns = match columns.entry(address.segment_ord) {
                std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                std::collections::hash_map::Entry::Vacant(entry) => entry.insert(HitColumns::open(
                    searcher.segment_reader(address.segment_ord),
                )?),
            };
            let doc = address.doc_id;
            let stored: TantivyDocument = searcher.doc(*address)?;
            let (default_locale, titles): (String, BTreeMap<String, String>) = stored
                .get_first(self.fields.titles)
                .and_then(|value| value.as_str())
                .and_then(|json| serde_json::from_str(json).ok())
                .unwrap_or_default();
            hits.push(Hit {
                id: string_at(&columns.id, doc)?,
                sku: string_at(&columns.sku, doc)?,
                title: title_for(&titles, locale, &default_locale),
                price_minor: columns.price.first(doc).unwrap_or_default(),
                currency: string_at(&columns.currency, doc)?,
                category_id: string_at(&columns.category_leaf, doc)?,
                rating_average: columns.rating.first(doc).unwrap_or_default(),
                rating_count: columns
                    .rating_count
                    .first(doc)
                    .and_then(|count| i32::try_from(count).ok())
                    .unwrap_or_default(),
                in_stock: columns.in_stock.first(doc).unwrap_or_default(),
            });
        }
        Ok(hits)
    }
}

/// Runs the query once for the page, the total and the facets.
fn run<C, K>(
    searcher: &Searcher,
    query: &dyn Query,
    top: C,
    aggregations: tantivy::aggregation::AggregationCollector,
) -> Result<
    (
        Vec<DocAddress>,
        usize,
        tantivy::aggregation::agg_result::AggregationResults,
    ),
    SearchError,
>
where
    C: Collector<Fruit = Vec<(K, DocAddress)>>,
{
    let (top, total, aggregated) = searcher.search(query, &(top, Count, aggregations))?;
    Ok((
        top.into_iter().map(|(_, address)| address).collect(),
        total,
        aggregated,
    ))
}

/// The fast fields a hit is read from, in one segment.
struct HitColumns {
    id: Option<StrColumn>,
    sku: Option<StrColumn>,
    currency: Option<StrColumn>,
    category_leaf: Option<StrColumn>,
    price: Column<i64>,
    rating: Column<f64>,
    rating_count: Column<i64>,
    in_stock: Column<bool>,
}

impl HitColumns {
    fn open(segment: &tantivy::SegmentReader) -> Result<HitColumns, SearchError> {
        let fast = segment.fast_fields();
        Ok(HitColumns {
            id: fast.str("id")?,
            sku: fast.str("sku")?,
            currency: fast.str("currency")?,
            category_leaf: fast.str("category_leaf")?,
            price: fast.i64("price")?,
            rating: fast.f64("rating")?,
            rating_count: fast.i64("rating_count")?,
            in_stock: fast.bool("in_stock")?,
        })
    }
}

fn string_at(column: &Option<StrColumn>, doc: u32) -> Result<String, SearchError> {
    let mut out = String::new();
    if let Some(column) = column
        && let Some(ord) = column.term_ords(doc).next()
    {
        column.ord_to_str(ord, &mut out)?;
    }
    Ok(out)
}

/// The title in `locale`, else in a locale of the same language, else in the default locale,
/// else any.
fn title_for(titles: &BTreeMap<String, String>, locale: &str, default_locale: &str) -> String {
    let primary = |tag: &str| {
        tag.split(['-', '_'])
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    let wanted = primary(locale);
    titles
        .get(locale)
        .or_else(|| {
            titles
                .iter()
                .find(|(tag, _)| !wanted.is_empty() && primary(tag) == wanted)
                .map(|(_, title)| title)
        })
        .or_else(|| titles.get(default_locale))
        .or_else(|| titles.values().next())
        .cloned()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_fall_back_to_the_language_then_the_default() {
        let titles: BTreeMap<String, String> =
            [("de", "Lampe"), ("en", "Lamp"), ("fr-CA", "Lampe CA")]
                .into_iter()
                .map(|(locale, title)| (locale.to_owned(), title.to_owned()))
                .collect();
        assert_eq!(title_for(&titles, "de", "en"), "Lampe");
        assert_eq!(title_for(&titles, "fr", "en"), "Lampe CA");
        assert_eq!(title_for(&titles, "EN-gb", "en"), "Lamp");
        assert_eq!(title_for(&titles, "it", "en"), "Lamp");
        assert_eq!(title_for(&titles, "", "de"), "Lampe");
        assert_eq!(title_for(&BTreeMap::new(), "en", "en"), "");
    }

    #[test]
    fn clearing_removes_only_index_files() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            VERSION_FILE,
            "meta.json",
            ".managed.json",
            ".tantivy-writer.lock",
            "0123456789abcdef0123456789abcdef.idx",
            "0123456789abcdef0123456789abcdef.12.del",
            "notes.txt",
        ] {
            fs::write(dir.path().join(name), b"x").unwrap();
        }
        clear(dir.path()).unwrap();
        let left: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(left, ["notes.txt"]);
    }
}
