//! `trailseal._core`: the thin PyO3 binding over trailseal-core.
//!
//! Conversions only: every per-event operation lives in trailseal-core. The GIL is released
//! (`py.detach`) around every call that does per-event work or file I/O; `Core` is a frozen class
//! holding a `Mutex<Spool>`, so trio worker threads may call it concurrently. `CoreError` (a
//! subclass of `trailseal.errors.TrailsealError`) is raised from exactly one place: [`core_err`].
use std::sync::{Mutex, MutexGuard};

use pyo3::buffer::PyBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyType};

use trailseal_core::spool::{self, LogCompression, Part, Sealing, Spool, SpoolConfig};
use trailseal_core::{chain, history, verify, CoreError};

static CORE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn core_error_type(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    CORE_ERROR
        .get_or_try_init(py, || {
            let base = py
                .import("trailseal.errors")?
                .getattr("TrailsealError")?
                .cast_into::<PyType>()?;
            PyErr::new_type(
                py,
                c"trailseal._core.CoreError",
                Some(
                    c"I/O or state error inside the core (message names the file and what failed).",
                ),
                Some(&base),
                None,
            )
        })
        .map(|t| t.bind(py))
}

/// The one mapping of core errors to Python.
fn core_err(e: CoreError) -> PyErr {
    Python::attach(|py| match core_error_type(py) {
        Ok(t) => PyErr::from_type(t.clone(), e.to_string()),
        Err(import_failed) => import_failed,
    })
}

#[pyclass(frozen, get_all, module = "trailseal._core")]
struct BatchResult {
    accepted: u64,
    unrouted: u64,
    duplicates: u64,
    duplicates_per_part: Vec<u64>,
    rejected: u64,
    errors: Vec<(usize, u64, String, String)>,
    lines: Vec<u64>,
    uncompressed_bytes: u64,
    compressed_bytes: u64,
}

#[pymethods]
impl BatchResult {
    fn __repr__(&self) -> String {
        format!(
            "BatchResult(accepted={}, unrouted={}, duplicates={}, rejected={}, lines={:?})",
            self.accepted, self.unrouted, self.duplicates, self.rejected, self.lines
        )
    }
}

#[pyclass(frozen, get_all, module = "trailseal._core")]
struct OpenSegment {
    trail: String,
    account: String,
    region: String,
    insight: bool,
    seq: u64,
    path: String,
    event_count: u64,
    uncompressed_bytes: u64,
    opened_at_ms: i64,
}

#[pymethods]
impl OpenSegment {
    fn __repr__(&self) -> String {
        format!(
            "OpenSegment(trail={:?}, account={:?}, region={:?}, seq={}, event_count={})",
            self.trail, self.account, self.region, self.seq, self.event_count
        )
    }
}

#[pyclass(frozen, get_all, module = "trailseal._core")]
struct SealedFile {
    trail: String,
    account: String,
    region: String,
    insight: bool,
    seq: u64,
    object_key: String,
    path: String,
    manifest_path: String,
    sha256: String,
    event_count: u64,
    oldest_event_time: String,
    newest_event_time: String,
    chain_start: String,
    chain_end: String,
    compression: String,
    compressed_bytes: u64,
    uncompressed_bytes: u64,
}

#[pymethods]
impl SealedFile {
    fn __repr__(&self) -> String {
        format!(
            "SealedFile(trail={:?}, seq={}, object_key={:?}, event_count={})",
            self.trail, self.seq, self.object_key, self.event_count
        )
    }
}

impl From<spool::SealedFile> for SealedFile {
    fn from(s: spool::SealedFile) -> Self {
        SealedFile {
            trail: s.trail,
            account: s.account,
            region: s.region,
            insight: s.insight,
            seq: s.seq,
            object_key: s.object_key,
            path: s.path.to_string_lossy().into_owned(),
            manifest_path: s.manifest_path.to_string_lossy().into_owned(),
            sha256: s.sha256,
            event_count: s.event_count,
            oldest_event_time: s.oldest_event_time,
            newest_event_time: s.newest_event_time,
            chain_start: s.chain_start,
            chain_end: s.chain_end,
            compression: s.compression,
            compressed_bytes: s.compressed_bytes,
            uncompressed_bytes: s.uncompressed_bytes,
        }
    }
}

#[pyclass(frozen, get_all, module = "trailseal._core")]
struct VerifyReport {
    sha256: String,
    event_count: u64,
    oldest_event_time: Option<String>,
    newest_event_time: Option<String>,
    chain_start: String,
    chain_end: String,
    event_ids: Vec<String>,
    problems: Vec<String>,
}

#[pymethods]
impl VerifyReport {
    fn __repr__(&self) -> String {
        format!(
            "VerifyReport(event_count={}, problems={:?})",
            self.event_count, self.problems
        )
    }
}

/// One trail's settings for the spool (checked when made).
#[pyclass(frozen, get_all, module = "trailseal._core")]
struct TrailSpec {
    name: String,
    selectors_json: String,
    multi_region: bool,
    compression: String,
    gzip_level: u32,
}

#[pymethods]
impl TrailSpec {
    #[new]
    #[pyo3(signature = (name, *, selectors_json = "{}", multi_region = true,
                        compression = "zstd", gzip_level = 6))]
    fn new(
        name: String,
        selectors_json: &str,
        multi_region: bool,
        compression: &str,
        gzip_level: u32,
    ) -> PyResult<Self> {
        let (selectors_json, compression) = (selectors_json.to_owned(), compression.to_owned());
        selectors_from_json(&selectors_json)
            .map_err(|e| PyValueError::new_err(format!("trail {name:?}: {e}")))?;
        if compression != "zstd" && compression != "gzip" {
            return Err(PyValueError::new_err(format!(
                "trail {name:?}: compression {compression:?} is not \"zstd\" or \"gzip\""
            )));
        }
        if !(1..=9).contains(&gzip_level) {
            return Err(PyValueError::new_err(format!(
                "trail {name:?}: gzip_level {gzip_level} is not 1 to 9"
            )));
        }
        Ok(TrailSpec {
            name,
            selectors_json,
            multi_region,
            compression,
            gzip_level,
        })
    }

    fn __repr__(&self) -> String {
        format!(
            "TrailSpec({:?}, selectors_json={:?}, multi_region={}, compression={:?}, gzip_level={})",
            self.name,
            self.selectors_json,
            if self.multi_region { "True" } else { "False" },
            self.compression,
            self.gzip_level
        )
    }
}

/// A batch's data as `Core.process` takes it: one read-only bytes-like object (`bytes`, or a
/// `memoryview` of one), or a list of them (the chunks as received, neither joined nor copied
/// out of what the listener read).
#[derive(FromPyObject)]
enum BatchData {
    One(PyBuffer<u8>),
    Pieces(Vec<PyBuffer<u8>>),
}

/// The bytes of a buffer `Core.process` was given. Only read-only, C-contiguous buffers are
/// taken: the slice is read with the GIL released, so nothing may change it meanwhile (a
/// read-only exporter cannot, and the held buffer keeps its memory where it is).
fn buffer_bytes(buffer: &PyBuffer<u8>) -> PyResult<&[u8]> {
    if !buffer.readonly() || !buffer.is_c_contiguous() {
        return Err(PyValueError::new_err(
            "Core.process takes bytes or read-only contiguous memoryviews of bytes",
        ));
    }
    // SAFETY: a read-only, C-contiguous buffer of len_bytes() bytes at buf_ptr(), valid and
    // unchanging while `buffer` (which outlives the returned slice) holds it
    Ok(unsafe { std::slice::from_raw_parts(buffer.buf_ptr().cast::<u8>(), buffer.len_bytes()) })
}

/// A trail as `Core` takes it: a name (default settings) or a `TrailSpec`.
#[derive(FromPyObject)]
enum TrailArg {
    Name(String),
    Spec(Py<TrailSpec>),
}

impl TrailArg {
    fn into_spec(self) -> PyResult<spool::TrailSpec> {
        let t = match self {
            TrailArg::Name(name) => return Ok(spool::TrailSpec::new(name)),
            TrailArg::Spec(t) => t,
        };
        let t = t.get();
        Ok(spool::TrailSpec {
            name: t.name.clone(),
            selectors: selectors_from_json(&t.selectors_json)?,
            multi_region: t.multi_region,
            compression: if t.compression == "gzip" {
                LogCompression::Gzip(t.gzip_level)
            } else {
                LogCompression::Zstd
            },
        })
    }
}

#[pyclass(frozen, module = "trailseal._core")]
struct Core {
    spool: Mutex<Spool>,
    /// Held by `sync` while it fsyncs outside `spool`: syncs run one at a time, in order, so a
    /// returning `sync` means everything written before it began is durable.
    syncing: Mutex<()>,
}

fn poisoned() -> CoreError {
    CoreError::Invalid(
        "the core stopped after a panic in another thread; open it again to recover".into(),
    )
}

/// Files collected by `Core.prepare_sync`, fsync'd by `Core.finish_sync`.
#[pyclass(frozen, module = "trailseal._core")]
struct PendingSync {
    inner: Mutex<Option<spool::PendingSync>>,
}

impl Core {
    /// fsync outside the spool lock; on failure the spool refuses further work.
    fn run_sync(&self, pending: spool::PendingSync) -> Result<(), CoreError> {
        pending.run().inspect_err(|e| {
            if let Ok(mut spool) = self.lock() {
                spool.sync_failed(e);
            }
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Spool>, CoreError> {
        self.spool.lock().map_err(|_| {
            CoreError::Invalid(
                "the core stopped after a panic in another thread; open it again to recover".into(),
            )
        })
    }
}

#[pymethods]
impl Core {
    #[new]
    #[pyo3(signature = (spool_dir, trails, *, account_id, region, max_event_bytes = 262_144,
                        add_receipt = true, dedup_capacity = 1_000_000, zstd_level = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        spool_dir: String,
        trails: Vec<TrailArg>,
        account_id: String,
        region: String,
        max_event_bytes: usize,
        add_receipt: bool,
        dedup_capacity: usize,
        zstd_level: i32,
    ) -> PyResult<Self> {
        let trails = trails
            .into_iter()
            .map(TrailArg::into_spec)
            .collect::<PyResult<Vec<_>>>()?;
        let cfg = SpoolConfig {
            spool_dir: spool_dir.into(),
            trails,
            account_id,
            region,
            max_event_bytes,
            add_receipt,
            dedup_capacity,
            zstd_level,
        };
        let spool = py.detach(|| Spool::open(cfg)).map_err(core_err)?;
        Ok(Core {
            spool: Mutex::new(spool),
            syncing: Mutex::new(()),
        })
    }

    fn recovery_notes(&self) -> PyResult<Vec<String>> {
        Ok(self.lock().map_err(core_err)?.recovery_notes().to_vec())
    }

    /// Hand `history` every frame written from now on with its events' lookup values (None:
    /// stop), so that it indexes them without reading them back.
    #[pyo3(signature = (history))]
    fn feed_history(&self, history: Option<&History>) -> PyResult<()> {
        self.lock()
            .map_err(core_err)?
            .feed_history(history.map(|h| h.inner.feed()));
        Ok(())
    }

    fn process(
        &self,
        py: Python<'_>,
        data: BatchData,
        parts: Vec<(usize, String, Option<String>, i64)>,
    ) -> PyResult<BatchResult> {
        let parts: Vec<Part> = parts
            .into_iter()
            .map(|(end, peer, agent, received_at_ms)| Part {
                end,
                peer,
                agent,
                received_at_ms,
            })
            .collect();
        let pieces: Vec<&[u8]> = match &data {
            BatchData::One(data) => vec![buffer_bytes(data)?],
            BatchData::Pieces(pieces) => {
                pieces.iter().map(buffer_bytes).collect::<PyResult<_>>()?
            }
        };
        let r = py
            .detach(|| self.lock()?.process_pieces(&pieces, &parts))
            .map_err(core_err)?;
        Ok(BatchResult {
            accepted: r.accepted,
            unrouted: r.unrouted,
            duplicates: r.duplicates,
            duplicates_per_part: r.duplicates_per_part,
            rejected: r.rejected,
            errors: r
                .errors
                .into_iter()
                .map(|(p, l, code, msg)| (p, l, code.to_owned(), msg))
                .collect(),
            lines: r.lines,
            uncompressed_bytes: r.uncompressed_bytes,
            compressed_bytes: r.compressed_bytes,
        })
    }

    /// Collect what to fsync under the spool's lock, then fsync without it: a `process` of the
    /// next batch may run meanwhile.
    fn sync(&self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| {
            let _order = self.syncing.lock().map_err(|_| poisoned())?;
            let pending = self.lock()?.prepare_sync()?;
            self.run_sync(pending)
        })
        .map_err(core_err)
    }

    /// The first half of `sync`: what was written so far, to fsync later with `finish_sync`.
    fn prepare_sync(&self) -> PyResult<PendingSync> {
        let pending = self
            .lock()
            .and_then(|mut s| s.prepare_sync())
            .map_err(core_err)?;
        Ok(PendingSync {
            inner: Mutex::new(Some(pending)),
        })
    }

    /// fsync what `prepare_sync` collected (once; again is a no-op), without holding the Core.
    fn finish_sync(&self, py: Python<'_>, pending: &PendingSync) -> PyResult<()> {
        py.detach(|| {
            let _order = self.syncing.lock().map_err(|_| poisoned())?;
            let taken = pending.inner.lock().map_err(|_| poisoned())?.take();
            match taken {
                Some(p) => self.run_sync(p),
                None => Ok(()),
            }
        })
        .map_err(core_err)
    }

    fn open_segments(&self) -> PyResult<Vec<OpenSegment>> {
        let spool = self.lock().map_err(core_err)?;
        Ok(spool
            .open_segments()
            .into_iter()
            .map(|s| OpenSegment {
                trail: s.trail,
                account: s.account,
                region: s.region,
                insight: s.insight,
                seq: s.seq,
                path: s.path.to_string_lossy().into_owned(),
                event_count: s.event_count,
                uncompressed_bytes: s.uncompressed_bytes,
                opened_at_ms: s.opened_at_ms,
            })
            .collect())
    }

    #[pyo3(signature = (trail, account, region, object_key, *, insight = false))]
    fn seal(
        &self,
        py: Python<'_>,
        trail: &str,
        account: &str,
        region: &str,
        object_key: &str,
        insight: bool,
    ) -> PyResult<Option<SealedFile>> {
        // The spool lock is held only for the fast part; a gzip trail's transcode runs after it
        // is released, so ingest (`process`) goes on meanwhile.
        let r = py
            .detach(|| {
                let started = self
                    .lock()?
                    .seal_start(trail, account, region, insight, object_key)?;
                match started {
                    None => Ok(None),
                    Some(Sealing::Done(sealed)) => Ok(Some(sealed)),
                    Some(Sealing::Gzip(pending)) => pending.run().map(Some).inspect_err(|e| {
                        if let Ok(mut spool) = self.lock() {
                            spool.seal_failed(e);
                        }
                    }),
                }
            })
            .map_err(core_err)?;
        Ok(r.map(SealedFile::from))
    }

    fn sealed_files(&self, py: Python<'_>, trail: &str) -> PyResult<Vec<SealedFile>> {
        let r = py
            .detach(|| self.lock()?.sealed_files(trail))
            .map_err(core_err)?;
        Ok(r.into_iter().map(SealedFile::from).collect())
    }

    fn remove_sealed(&self, py: Python<'_>, trail: &str, seq: u64) -> PyResult<()> {
        py.detach(|| self.lock()?.remove_sealed(trail, seq))
            .map_err(core_err)
    }

    fn upsert_trail(&self, py: Python<'_>, spec: Py<TrailSpec>) -> PyResult<()> {
        let spec = TrailArg::Spec(spec).into_spec()?;
        py.detach(|| self.lock()?.upsert_trail(spec))
            .map_err(core_err)
    }

    fn set_logging(&self, trail: &str, on: bool) -> PyResult<()> {
        self.lock()
            .and_then(|mut s| s.set_logging(trail, on))
            .map_err(core_err)
    }

    fn remove_trail(&self, py: Python<'_>, trail: &str) -> PyResult<()> {
        py.detach(|| self.lock()?.remove_trail(trail))
            .map_err(core_err)
    }
}

// ---------------------------------------------------------------------------------------------
// The event history (trailseal_core::history): SQLite, fed by tailing the spool

#[pyclass(frozen, get_all, module = "trailseal._core")]
struct IndexReport {
    events: u64,
    inserted: u64,
    more: bool,
    fed: u64,
}

#[pyclass(frozen, get_all, module = "trailseal._core")]
struct HistoryEvent {
    event_id: String,
    event_name: String,
    event_time: i64,
    read_only: bool,
    username: Option<String>,
    access_key_id: Option<String>,
    event_source: String,
    insight: bool,
    resources: Vec<(Option<String>, Option<String>)>,
    cloudtrail_event: String,
}

#[pymethods]
impl HistoryEvent {
    fn __repr__(&self) -> String {
        format!(
            "HistoryEvent(event_id={:?}, event_name={:?}, event_time={})",
            self.event_id, self.event_name, self.event_time
        )
    }
}

/// A lookup's events and the cursor of the next page.
type LookupPage = (Vec<HistoryEvent>, Option<(i64, i64)>);

#[pyclass(frozen, module = "trailseal._core")]
struct History {
    inner: std::sync::Arc<history::History>,
    indexer: Mutex<Option<history::Indexer>>,
}

impl History {
    fn indexer(&self) -> PyResult<MutexGuard<'_, Option<history::Indexer>>> {
        self.indexer
            .lock()
            .map_err(|_| core_err(CoreError::Invalid("history indexer lock poisoned".into())))
    }
}

#[pymethods]
impl History {
    #[new]
    fn new(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let inner = py
            .detach(|| history::History::open(&path))
            .map_err(core_err)?;
        Ok(History {
            inner: std::sync::Arc::new(inner),
            indexer: Mutex::new(None),
        })
    }

    #[pyo3(signature = (spool_dir, poll_ms = 250, batch = 50_000))]
    fn start_indexer(
        &self,
        spool_dir: std::path::PathBuf,
        poll_ms: u64,
        batch: u64,
    ) -> PyResult<u64> {
        let mut slot = self.indexer()?;
        if let Some(ix) = slot.as_ref() {
            return Ok(ix.tid());
        }
        let ix = history::Indexer::spawn(
            self.inner.clone(),
            spool_dir,
            std::time::Duration::from_millis(poll_ms),
            batch,
        )
        .map_err(core_err)?;
        let tid = ix.tid();
        *slot = Some(ix);
        Ok(tid)
    }

    fn poke(&self) -> PyResult<()> {
        if let Some(ix) = self.indexer()?.as_ref() {
            ix.poke();
        }
        Ok(())
    }

    fn indexed(&self) -> PyResult<u64> {
        Ok(self.indexer()?.as_ref().map_or(0, |ix| ix.indexed()))
    }

    fn fed(&self) -> PyResult<u64> {
        Ok(self.indexer()?.as_ref().map_or(0, |ix| ix.fed()))
    }

    fn indexer_error(&self) -> PyResult<Option<String>> {
        Ok(self.indexer()?.as_ref().and_then(|ix| ix.error()))
    }

    fn stop_indexer(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.indexer()?.take();
        if let Some(mut ix) = taken {
            py.detach(move || ix.stop());
        }
        Ok(())
    }

    #[pyo3(signature = (spool_dir, max_events = 100_000))]
    fn index_spool(
        &self,
        py: Python<'_>,
        spool_dir: std::path::PathBuf,
        max_events: u64,
    ) -> PyResult<IndexReport> {
        let r = py
            .detach(|| self.inner.index_spool(&spool_dir, max_events))
            .map_err(core_err)?;
        Ok(IndexReport {
            events: r.events,
            inserted: r.inserted,
            more: r.more,
            fed: r.fed,
        })
    }

    fn covered(&self, py: Python<'_>, trail: &str, seq: u64) -> PyResult<bool> {
        py.detach(|| self.inner.covered(trail, seq))
            .map_err(core_err)
    }

    fn add_log(&self, py: Python<'_>, data: &[u8], compression: &str) -> PyResult<(u64, u64)> {
        let comp = verify::Compression::parse(compression).ok_or_else(|| {
            PyValueError::new_err(format!(
                "compression {compression:?} is not known: use \"zstd\" or \"gzip\""
            ))
        })?;
        py.detach(|| self.inner.add_log(data, comp))
            .map_err(core_err)
    }

    #[pyo3(signature = (cutoff_ms, max_rows = 5000))]
    fn expire(&self, py: Python<'_>, cutoff_ms: i64, max_rows: u64) -> PyResult<u64> {
        py.detach(|| self.inner.expire(cutoff_ms, max_rows))
            .map_err(core_err)
    }

    fn count(&self, py: Python<'_>) -> PyResult<u64> {
        py.detach(|| self.inner.count()).map_err(core_err)
    }

    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, attribute_key = None, attribute_value = None, start_ms = None,
                        end_ms = None, insight = false, limit = 50, after = None))]
    fn lookup(
        &self,
        py: Python<'_>,
        attribute_key: Option<&str>,
        attribute_value: Option<&str>,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        insight: bool,
        limit: usize,
        after: Option<(i64, i64)>,
    ) -> PyResult<LookupPage> {
        let attribute = match attribute_key {
            None => None,
            Some(k) => Some(
                history::Attribute::parse(k, attribute_value.unwrap_or(""))
                    .ok_or_else(|| PyValueError::new_err(format!("unknown attribute key {k:?}")))?,
            ),
        };
        let q = history::Query {
            attribute,
            start_ms,
            end_ms,
            insight,
            limit,
            after,
        };
        let (found, next) = py.detach(|| self.inner.lookup(&q)).map_err(core_err)?;
        let events = found
            .into_iter()
            .map(|f| HistoryEvent {
                event_id: f.fields.event_id,
                event_name: f.fields.event_name,
                event_time: f.fields.event_time_ms.div_euclid(1000),
                read_only: f.fields.read_only,
                username: f.fields.username,
                access_key_id: f.fields.access_key_id,
                event_source: f.fields.event_source,
                insight: f.fields.insight,
                resources: f.fields.resources,
                cloudtrail_event: f.record,
            })
            .collect();
        Ok((events, next))
    }
}

#[pyfunction]
fn canonicalize<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Bound<'py, PyBytes>> {
    let out = trailseal_core::canonical::canonicalize(data)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(PyBytes::new(py, &out))
}

#[pyfunction]
fn chain_step<'py>(
    py: Python<'py>,
    previous: &[u8],
    canonical_event: &[u8],
) -> PyResult<Bound<'py, PyBytes>> {
    let prev: chain::ChainValue = previous.try_into().map_err(|_| {
        PyValueError::new_err(format!(
            "previous chain value must be 32 bytes, got {}",
            previous.len()
        ))
    })?;
    Ok(PyBytes::new(py, &chain::step(&prev, canonical_event)))
}

/// Inputs at least this large are counted with the GIL released.
const COUNT_LINES_DETACH_BYTES: usize = 1 << 20;

#[pyfunction]
fn count_lines(py: Python<'_>, data: PyBuffer<u8>) -> PyResult<usize> {
    let data = buffer_bytes(&data)?;
    Ok(if data.len() >= COUNT_LINES_DETACH_BYTES {
        py.detach(|| trailseal_core::lines::count_non_blank(data))
    } else {
        trailseal_core::lines::count_non_blank(data)
    })
}

#[pyfunction]
fn verify_log(
    py: Python<'_>,
    data: &[u8],
    compression: &str,
    chain_start: &str,
) -> PyResult<VerifyReport> {
    let comp = verify::Compression::parse(compression).ok_or_else(|| {
        PyValueError::new_err(format!(
            "compression {compression:?} is not known: use \"zstd\" or \"gzip\""
        ))
    })?;
    let start = chain::from_hex(chain_start).ok_or_else(|| {
        PyValueError::new_err(format!("chain_start {chain_start:?} is not 64 hex digits"))
    })?;
    let r = py.detach(|| verify::verify_log(data, comp, &start));
    Ok(VerifyReport {
        sha256: r.sha256,
        event_count: r.event_count,
        oldest_event_time: r.oldest_event_time,
        newest_event_time: r.newest_event_time,
        chain_start: r.chain_start,
        chain_end: r.chain_end,
        event_ids: r.event_ids,
        problems: r.problems,
    })
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("CoreError", core_error_type(m.py())?)?;
    m.add_class::<Core>()?;
    m.add_class::<TrailSpec>()?;
    m.add_class::<BatchResult>()?;
    m.add_class::<OpenSegment>()?;
    m.add_class::<SealedFile>()?;
    m.add_class::<VerifyReport>()?;
    m.add_class::<PendingSync>()?;
    m.add_class::<History>()?;
    m.add_class::<HistoryEvent>()?;
    m.add_class::<IndexReport>()?;
    m.add_function(wrap_pyfunction!(canonicalize, m)?)?;
    m.add_function(wrap_pyfunction!(chain_step, m)?)?;
    m.add_function(wrap_pyfunction!(verify_log, m)?)?;
    m.add_function(wrap_pyfunction!(count_lines, m)?)?;
    m.add_function(wrap_pyfunction!(check_selectors, m)?)?;
    m.add_function(wrap_pyfunction!(selector_matches, m)?)?;
    m.add_function(wrap_pyfunction!(limit_malloc_arenas, m)?)?;
    m.add_function(wrap_pyfunction!(history_schema, m)?)?;
    m.add_function(wrap_pyfunction!(history_files_dir, m)?)?;
    m.add("HISTORY_SCHEMA", history::SCHEMA_VERSION)?;
    Ok(())
}

/// The schema version of the history database at `path` (None: no file, or no version).
#[pyfunction]
fn history_schema(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Option<i64>> {
    py.detach(|| history::schema_of(&path)).map_err(core_err)
}

/// The directory of the files the history database at `path` keeps its frames in.
#[pyfunction]
fn history_files_dir(path: std::path::PathBuf) -> std::path::PathBuf {
    history::files_dir(&path)
}

/// Let glibc's malloc keep at most `arenas` arenas (`mallopt(M_ARENA_MAX)`) for threads made from
/// now on; false where the C library is not glibc. By default every thread that allocates gets
/// an arena of its own (up to 8 per core), each holding on to the memory it once used.
#[pyfunction]
fn limit_malloc_arenas(arenas: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets an allocator parameter; any value is accepted or refused.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = arenas;
        false
    }
}

// ---------------------------------------------------------------------------------------------
// Event selectors (trailseal_core::select): config checks and tests; the spool evaluates them
// per batch.

fn selectors_from_json(selectors_json: &str) -> PyResult<trailseal_core::select::Selectors> {
    trailseal_core::select::Selectors::from_json(selectors_json)
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pyfunction]
fn check_selectors(selectors_json: &str) -> PyResult<()> {
    selectors_from_json(selectors_json).map(|_| ())
}

#[pyfunction]
fn selector_matches(selectors_json: &str, canonical_event: &[u8]) -> PyResult<bool> {
    let selectors = selectors_from_json(selectors_json)?;
    let record = trailseal_core::select::EventRecord::from_canonical(canonical_event)
        .map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(record.with_fields(|fields| selectors.matches(fields)))
}
