//! One segment file of a partition log, written with O_DIRECT through a glommio DMA file.
//!
//! The file holds record batches exactly as served to consumers. Writes go in 4 KiB-aligned
//! buffers; the partial last page is kept in memory (`tail`) and rewritten, with what follows
//! it, on the next write. So the file may end in zero padding past the logical `size` until
//! the segment is sealed (truncated to its exact size) or recovered (scanned and truncated).
//!
//! Writes are pipelined: a write is prepared (buffers filled, the end moved) at once, and goes
//! to the file while later ones are prepared and sent. Only the page two writes share is
//! ordered: a write rewrites the previous write's last page once that write is done. Writes
//! are committed (made readable) in order with `commit`.

use bytes::Bytes;
use event_listener::Event;
use glommio::io::{DmaBuffer, DmaFile};
use std::cell::{Cell, RefCell};
use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;
use tern_protocol::batch::{self, BatchHeader};

use crate::fs;
use crate::index::{OffsetIndex, TimeIndex};
use crate::records::{FileRange, StoredBatch};

const PAGE: u64 = 4096;
const SCAN_CHUNK: usize = 1 << 20;
/// The write buffer of a segment's replacement (two in flight).
const REPLACEMENT_BUFFER: usize = 1 << 20;
/// Segment files grow in preallocated steps: writes inside the file's size are not
/// size-extending, so the kernel can complete them asynchronously instead of handing them
/// to io_uring worker threads. Each step doubles the file, from 64 KiB up to 64 MiB at a
/// time: an append that needs a step waits for it (fallocate goes to an io_uring worker thread,
/// which alone waited 1-2.6 ms for a busy core), so a busy partition needs few (a dozen in its
/// first 64 MiB, then one per 64 MiB), and a quiet one holds little unused space (10,000 idle
/// partitions take 640 MiB, not 40 GiB).
const PREALLOCATE_MIN: u64 = 64 << 10;
const PREALLOCATE_MAX: u64 = 64 << 20;

/// A segment of one partition. Exists per partition on the shard that owns it.
pub struct Segment {
    pub base_offset: i64,
    path: PathBuf,
    file: DmaFile,
    /// The same file opened for buffered reads, which go to sockets with sendfile. Opened on
    /// the first read that misses the cache.
    reader: RefCell<Option<Arc<std::fs::File>>>,
    /// Logical size: bytes of whole batches written and committed (readable).
    size: Cell<u64>,
    /// Where the next prepared write goes: `size` plus the writes prepared but not committed.
    end: Cell<u64>,
    /// Bytes of the partial last page, `[end & !(PAGE-1), end)`.
    tail: RefCell<Vec<u8>>,
    /// Done when the last prepared write is done: the next one rewrites its last page then.
    last_write: RefCell<Option<Rc<Latch>>>,
    /// Offset after the last batch in this segment.
    next_offset: Cell<i64>,
    /// Bytes preallocated on disk (the file's size while the segment is active).
    allocated: Cell<u64>,
    max_timestamp: Cell<i64>,
    index: RefCell<OffsetIndex>,
    time_index: RefCell<TimeIndex>,
    bytes_since_index: Cell<u64>,
    created: Instant,
    /// Aborted-transaction index entries to write when sealed (see `txn_index`).
    aborted: RefCell<Vec<u8>>,
}

/// Opens once, when a write is done (or failed, or was dropped).
#[derive(Default)]
pub(crate) struct Latch {
    open: Cell<bool>,
    opened: Event,
}

impl Latch {
    pub(crate) fn open(&self) {
        self.open.set(true);
        self.opened.notify(usize::MAX);
    }

    pub(crate) async fn wait(&self) {
        // Single-threaded: the flag cannot change between the check and the listen.
        while !self.open.get() {
            self.opened.listen().await;
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Test hook: every segment write waits for the latch, and the one with the index given
    /// (counting from 0, in the order they are sent) then reports failure after its data is
    /// written, as a write whose completion failed. The index counts down as writes go.
    pub(crate) static WRITE_GATE: RefCell<Option<(Rc<Latch>, Cell<usize>)>> = const { RefCell::new(None) };
}

/// Opens its latch when dropped, so a write that is abandoned does not hold up the next.
struct OpenOnDrop(Rc<Latch>);

impl Drop for OpenOnDrop {
    fn drop(&mut self) {
        self.0.open();
    }
}

/// A write made by [`Segment::prepare`]: page-aligned buffers ready for the file.
pub struct PreparedWrite {
    /// Where the write starts: the page holding the segment's end when it was prepared.
    page_start: u64,
    /// The first page alone when it holds the previous tail (see `prepare`), else everything.
    first: DmaBuffer,
    rest: Option<DmaBuffer>,
    /// The previous write, when the first page rewrites its last page.
    after: Option<Rc<Latch>>,
    done: Rc<Latch>,
}

/// What recovery cut off the end of a segment file.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    pub bytes: u64,
    /// The cut began with data (a torn or corrupt batch), not with zeros: space preallocated
    /// and never written, which every segment not sealed has after its data.
    pub data: bool,
}

/// How a segment's tail is trusted when it is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenMode {
    /// A closed segment, or any after a clean shutdown: sealed, unless its indexes (written
    /// last when sealing) are missing.
    Sealed,
    /// May end in a torn or corrupt batch: verify every batch, truncate at the first bad one.
    Recover,
}

fn path_with(dir: &Path, base: i64, ext: &str) -> PathBuf {
    dir.join(format!("{base:020}.{ext}"))
}

/// `(timestamp, offset)` of the first record with timestamp >= `ts` in the batch `batch`.
pub fn first_record_at_or_after(batch: &[u8], ts: i64) -> io::Result<Option<(i64, i64)>> {
    let header = BatchHeader::parse(batch).map_err(io::Error::other)?;
    if header.is_log_append_time() {
        return Ok(
            (header.max_timestamp >= ts).then_some((header.max_timestamp, header.base_offset))
        );
    }
    let mut bytes = Bytes::copy_from_slice(&batch[..header.total_len().min(batch.len())]);
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e:#}")))?;
    Ok(set
        .records
        .iter()
        .find(|r| r.timestamp >= ts)
        .map(|r| (r.timestamp, r.offset)))
}

/// Copies bytes `[from, from + dst.len())` of the concatenation of `parts` into `dst`, and
/// zeroes what lies past the end of `parts`.
fn copy_span<'a>(dst: &mut [u8], from: usize, parts: impl Iterator<Item = &'a [u8]>) {
    let to = from + dst.len();
    let (mut pos, mut filled) = (0, 0);
    for part in parts {
        let (start, end) = (pos, pos + part.len());
        pos = end;
        if end <= from {
            continue;
        }
        if start >= to {
            break;
        }
        let (s, e) = (from.max(start), to.min(end));
        dst[s - from..e - from].copy_from_slice(&part[s - start..e - start]);
        filled = e - from;
    }
    dst[filled..].fill(0);
}

/// Extension of a compacted segment not yet swapped in.
pub const CLEANED: &str = "cleaned";

/// Base offset of a segment file name (`00000000000000000042.log`), if it is one.
pub fn parse_segment_name(path: &Path) -> Option<i64> {
    if path.extension()? != "log" {
        return None;
    }
    path.file_stem()?.to_str()?.parse().ok()
}

/// A segment's replacement being written (compaction), to `<base>.cleaned`.
pub struct Replacement {
    path: PathBuf,
    writer: glommio::io::DmaStreamWriter,
}

impl Replacement {
    pub async fn write(&mut self, data: &[u8]) -> io::Result<()> {
        futures::AsyncWriteExt::write_all(&mut self.writer, data).await
    }

    /// Gives the replacement up: its file is removed.
    pub async fn abandon(self) -> io::Result<()> {
        let Replacement { path, mut writer } = self;
        let _ = futures::AsyncWriteExt::close(&mut writer).await;
        fs::remove_file(&path).await
    }
}

impl Segment {
    /// Creates a new empty segment starting at `base_offset`.
    pub async fn create(dir: &Path, base_offset: i64) -> io::Result<Segment> {
        let path = path_with(dir, base_offset, "log");
        let file = fs::create_rw(&path).await?;
        Ok(Segment::new(base_offset, path, file, 0))
    }

    fn new(base_offset: i64, path: PathBuf, file: DmaFile, size: u64) -> Segment {
        Segment {
            base_offset,
            path,
            file,
            reader: RefCell::new(None),
            size: Cell::new(size),
            end: Cell::new(size),
            tail: RefCell::new(Vec::new()),
            last_write: RefCell::new(None),
            next_offset: Cell::new(base_offset),
            allocated: Cell::new(size),
            max_timestamp: Cell::new(-1),
            index: RefCell::new(OffsetIndex::default()),
            time_index: RefCell::new(TimeIndex::default()),
            bytes_since_index: Cell::new(0),
            created: Instant::now(),
            aborted: RefCell::new(Vec::new()),
        }
    }

    /// Opens an existing segment. A sealed one's indexes are loaded; with `OpenMode::Recover`,
    /// or when they are missing or damaged, every batch is verified, the indexes rebuilt and the
    /// file truncated after the last good batch. Returns the segment and what recovery cut
    /// off.
    pub async fn open(
        dir: &Path,
        base_offset: i64,
        mode: OpenMode,
        index_interval: u64,
    ) -> io::Result<(Segment, Cut)> {
        let path = path_with(dir, base_offset, "log");
        let file = fs::open_rw(&path).await?;
        let file_size = file.file_size().await?;
        let seg = Segment::new(base_offset, path, file, file_size);
        let indexes = match mode {
            OpenMode::Sealed => {
                let index = fs::read_file(&seg.index_path())
                    .await?
                    .and_then(|d| OffsetIndex::from_bytes(&d, file_size.max(1)));
                let time_index = fs::read_file(&seg.time_index_path())
                    .await?
                    .and_then(|d| TimeIndex::from_bytes(&d));
                index.zip(time_index)
            }
            OpenMode::Recover => None,
        };
        let mut cut = Cut::default();
        match indexes {
            Some((index, time_index)) => {
                let from = index.last_position() as u64;
                *seg.index.borrow_mut() = index;
                if let Some(ts) = time_index.max_timestamp() {
                    seg.max_timestamp.set(ts);
                }
                *seg.time_index.borrow_mut() = time_index;
                // Walk the batches after the last index entry to learn the end offset.
                let end = seg.scan(from, file_size, false, |_, h, _| {
                    seg.next_offset.set(h.last_offset() + 1);
                    seg.max_timestamp
                        .set(seg.max_timestamp.get().max(h.max_timestamp));
                    true
                });
                end.await?;
            }
            // Recovering, or the indexes are missing or damaged: a seal (which writes them
            // last) did not finish, so the file may end in a torn batch or preallocated space.
            None => {
                let end = seg.rebuild(0, file_size, true, index_interval).await?;
                if end < file_size {
                    let first = seg.file.read_at(end, (file_size - end).min(PAGE) as usize);
                    cut = Cut {
                        bytes: file_size - end,
                        data: first.await?.iter().any(|&b| b != 0),
                    };
                    seg.file.truncate(end).await?;
                    seg.file.fdatasync().await?;
                }
                seg.size.set(end);
                if mode == OpenMode::Sealed {
                    // A closed segment is never sealed later: write its indexes now.
                    seg.seal().await?;
                }
            }
        }
        seg.load_tail().await?;
        Ok((seg, cut))
    }

    /// Re-reads every batch in `[from, to)`, rebuilding indexes and end offset; returns where
    /// the valid batches end.
    async fn rebuild(
        &self,
        from: u64,
        to: u64,
        verify: bool,
        index_interval: u64,
    ) -> io::Result<u64> {
        *self.index.borrow_mut() = OffsetIndex::default();
        *self.time_index.borrow_mut() = TimeIndex::default();
        self.bytes_since_index.set(index_interval);
        let mut expected = self.base_offset;
        self.scan(from, to, verify, |pos, h, _| {
            if h.base_offset < expected {
                return false; // offsets never go backwards in a sound segment
            }
            expected = h.last_offset() + 1;
            self.note_batch(pos, h, index_interval);
            true
        })
        .await
    }

    async fn load_tail(&self) -> io::Result<()> {
        let size = self.size.get();
        let page_start = size & !(PAGE - 1);
        let tail = if size > page_start {
            self.file
                .read_at(page_start, (size - page_start) as usize)
                .await?
                .to_vec()
        } else {
            Vec::new()
        };
        *self.tail.borrow_mut() = tail;
        self.end.set(size);
        Ok(())
    }

    /// Forgets the writes prepared but not committed (after one failed; none may be in
    /// flight): the next write goes where the committed data ends. Those writes may have
    /// reached the file, so it is cut there (and synced), lest recovery after a crash find
    /// batches whose producers were told they failed.
    pub async fn reset_to_committed(&self) -> io::Result<()> {
        let size = self.size.get();
        self.file.truncate(size).await?;
        self.file.fdatasync().await?;
        self.allocated.set(size);
        *self.last_write.borrow_mut() = None;
        self.load_tail().await
    }

    /// Records a batch written at `pos` in the end offset, timestamps and sparse indexes.
    fn note_batch(&self, pos: u64, h: &BatchHeader, index_interval: u64) {
        let relative = (h.base_offset - self.base_offset) as u32;
        if self.bytes_since_index.get() >= index_interval {
            self.index.borrow_mut().push(relative, pos as u32);
            self.bytes_since_index.set(0);
        }
        self.bytes_since_index
            .set(self.bytes_since_index.get() + h.total_len() as u64);
        if h.max_timestamp > self.max_timestamp.get() {
            self.max_timestamp.set(h.max_timestamp);
            self.time_index.borrow_mut().push(h.max_timestamp, relative);
        }
        self.next_offset.set(h.last_offset() + 1);
    }

    /// Walks the batches in `[from, to)`, calling `visit(position, header, batch)` until it
    /// returns false. With `verify`, each batch's CRC is checked. Returns the position after the last
    /// good batch visited (a torn, corrupt or zero-padded region ends the walk).
    async fn scan(
        &self,
        mut pos: u64,
        to: u64,
        verify: bool,
        mut visit: impl FnMut(u64, &BatchHeader, &[u8]) -> bool,
    ) -> io::Result<u64> {
        while let Some(data) = self.whole_batches(pos, to, SCAN_CHUNK).await? {
            for (at, header) in batch::headers(&data) {
                let one = &data[at..at + header.total_len()];
                if (verify && batch::validate(one).is_err())
                    || !visit(pos + at as u64, &header, one)
                {
                    return Ok(pos + at as u64);
                }
            }
            pos += data.len() as u64;
        }
        Ok(pos)
    }

    /// Whole batches from position `pos` (a batch start), none past `to`: as many as fit in
    /// `chunk` bytes, or the one batch there, read whole, if it is larger. `None` at `to`, or
    /// where no whole batch starts (a torn, corrupt or zero-padded region: the caller says
    /// what that means).
    async fn whole_batches(
        &self,
        pos: u64,
        to: u64,
        chunk: usize,
    ) -> io::Result<Option<glommio::io::ReadResult>> {
        let mut want = chunk;
        loop {
            let len = want.min(to.saturating_sub(pos) as usize);
            if len == 0 {
                return Ok(None);
            }
            let data = self.file.read_at(pos, len).await?;
            let whole = batch::headers(&data)
                .last()
                .map_or(0, |(at, h)| at + h.total_len());
            if whole > 0 {
                return Ok(glommio::io::ReadResult::slice(&data, 0, whole));
            }
            match BatchHeader::parse(&data) {
                Ok(h) if pos + h.total_len() as u64 <= to && h.total_len() > want => {
                    want = h.total_len();
                }
                _ => return Ok(None),
            }
        }
    }

    /// Prepares the write of whole batches (already offset-assigned) at the end of the segment,
    /// after the writes prepared before, growing the file first if needed. Send it with
    /// `write`, then `commit` it after those before it. Calls must not overlap (the log's
    /// write lock). The file is preallocated no further than `max_bytes` (the segment size the
    /// log rolls at) when the write fits below it.
    pub async fn prepare(&self, batches: &[StoredBatch], max_bytes: u64) -> PreparedWrite {
        let from = self.end.get();
        let page_start = from & !(PAGE - 1);
        let new_bytes: usize = batches.iter().map(|b| b.len()).sum();
        let to = from + new_bytes as u64;
        // The page holding the old tail is written on its own: it overwrites written blocks,
        // the rest goes to preallocated (unwritten) ones, and ext4 refuses io_uring's
        // non-blocking attempt for a write spanning both kinds, handing every append to a
        // kernel worker thread. It is also the one page the previous write may still be
        // writing.
        let (first, rest, shares_page) = {
            let mut tail = self.tail.borrow_mut();
            let len = tail.len() + new_bytes;
            // Whole filesystem blocks: ext4 also refuses the non-blocking attempt for a write
            // that ends inside a block (it may have to zero the rest).
            let aligned = (len as u64).div_ceil(PAGE) as usize * PAGE as usize;
            let shares_page = !tail.is_empty();
            let split = if shares_page {
                aligned.min(PAGE as usize)
            } else {
                aligned
            };
            let parts = || {
                std::iter::once(&tail[..])
                    .chain(batches.iter().flat_map(|b| [&b.head()[..], &b.rest()[..]]))
            };
            let mut first = self.file.alloc_dma_buffer(split);
            copy_span(first.as_bytes_mut(), 0, parts());
            let rest = (aligned > split).then(|| {
                let mut buf = self.file.alloc_dma_buffer(aligned - split);
                copy_span(buf.as_bytes_mut(), split, parts());
                buf
            });
            let new_tail_start = ((to & !(PAGE - 1)) - page_start) as usize;
            let mut new_tail = vec![0; len - new_tail_start];
            copy_span(&mut new_tail, new_tail_start, parts());
            *tail = new_tail;
            (first, rest, shares_page)
        };
        self.end.set(to);
        let done = Rc::new(Latch::default());
        let previous = self.last_write.replace(Some(done.clone()));
        let needed = page_start + (first.len() + rest.as_ref().map_or(0, |b| b.len())) as u64;
        self.grow_to(needed, max_bytes).await;
        PreparedWrite {
            page_start,
            first,
            rest,
            after: previous.filter(|_| shares_page),
            done,
        }
    }

    /// Preallocates the file past `needed` when it is shorter (best effort: a full disk then
    /// fails the write itself), but not past `max_bytes` unless `needed` is: the segment rolls
    /// before it, so space past it would never be written, only held until the seal frees it
    /// (up to a whole 64 MiB step per partition, and a discard of it on a filesystem mounted
    /// with `discard`).
    async fn grow_to(&self, needed: u64, max_bytes: u64) {
        if needed <= self.allocated.get() {
            return;
        }
        let cap = max_bytes.div_ceil(PAGE).saturating_mul(PAGE);
        let step = self.allocated.get().clamp(PREALLOCATE_MIN, PREALLOCATE_MAX);
        // When the disk is nearly full, a smaller step, else none.
        let steps: &[u64] = if step > PREALLOCATE_MIN {
            &[step, PREALLOCATE_MIN]
        } else {
            &[PREALLOCATE_MIN]
        };
        for &step in steps {
            let mut target = needed.div_ceil(step) * step;
            if needed <= cap {
                target = target.min(cap);
            }
            if self.file.pre_allocate(target, false).await.is_ok() {
                self.allocated.set(target);
                break;
            }
        }
    }

    /// Sends a prepared write to the file. Its whole new pages go at once; the page it shares
    /// with the previous write goes once that write is done, so the two cannot land out of
    /// order.
    pub async fn write(&self, write: PreparedWrite) -> io::Result<()> {
        let PreparedWrite {
            page_start,
            first,
            rest,
            after,
            done,
        } = write;
        let _done = OpenOnDrop(done);
        #[cfg(test)]
        let fail = match WRITE_GATE.with(|g| {
            g.borrow().as_ref().map(|(gate, left)| {
                let n = left.get();
                left.set(n.wrapping_sub(1));
                (gate.clone(), n == 0)
            })
        }) {
            Some((gate, fail)) => {
                gate.wait().await;
                fail
            }
            None => false,
        };
        let (first_len, rest_len) = (first.len(), rest.as_ref().map_or(0, |b| b.len()));
        let write_first = async {
            if let Some(previous) = after {
                previous.wait().await;
            }
            self.file.write_at(first, page_start).await
        };
        let write_rest = async {
            match rest {
                Some(buf) => self.file.write_at(buf, page_start + first_len as u64).await,
                None => Ok(0),
            }
        };
        let (first_written, rest_written) = futures::join!(write_first, write_rest);
        #[cfg(test)]
        if fail {
            return Err(io::Error::other("injected write failure"));
        }
        if first_written? < first_len || rest_written? < rest_len {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short segment write",
            ));
        }
        Ok(())
    }

    /// Makes a written write's batches readable and indexed. Writes are committed in the order
    /// they were prepared, so each one's batches start where the committed data ends.
    pub fn commit(&self, batches: &[StoredBatch], index_interval: u64) {
        let mut pos = self.size.get();
        for b in batches {
            // The header was parsed when the batch was appended; it cannot fail here.
            if let Ok(header) = BatchHeader::parse(b.head()) {
                self.note_batch(pos, &header, index_interval);
            }
            pos += b.len() as u64;
        }
        self.size.set(pos);
    }

    /// Where the data prepared so far ends: the size once every prepared write is committed.
    pub fn end(&self) -> u64 {
        self.end.get()
    }

    /// The timestamp of the segment's first batch (its base timestamp), if it has one. Reads
    /// that batch's header only.
    pub async fn first_timestamp(&self) -> io::Result<Option<i64>> {
        if self.size.get() < batch::HEADER_LEN as u64 {
            return Ok(None);
        }
        let head = self.file.read_at(0, batch::HEADER_LEN).await?;
        Ok(BatchHeader::parse(&head).ok().map(|h| h.base_timestamp))
    }

    /// Calls `f` with the header of every batch in the segment, in order.
    /// Calls `f(header, batch)` for each batch, in order.
    pub async fn visit_batches(&self, mut f: impl FnMut(&BatchHeader, &[u8])) -> io::Result<()> {
        self.scan(0, self.size.get(), false, |_, h, b| {
            f(h, b);
            true
        })
        .await?;
        Ok(())
    }

    pub async fn sync(&self) -> io::Result<()> {
        Ok(self.file.fdatasync().await?)
    }

    /// Makes the segment exact on disk: synced, truncated to its logical size, indexes saved.
    pub async fn seal(&self) -> io::Result<()> {
        self.file.truncate(self.size.get()).await?;
        self.allocated.set(self.size.get());
        self.file.fdatasync().await?;
        let index = self.index.borrow().to_bytes();
        let time_index = self.time_index.borrow().to_bytes();
        fs::write_file(&self.index_path(), &index).await?;
        fs::write_file(&self.time_index_path(), &time_index).await?;
        let aborted = self.aborted.borrow().clone();
        if !aborted.is_empty() {
            crate::txn_index::write(&self.path, &aborted).await?;
        }
        Ok(())
    }

    /// The aborted-transaction index entries the next seal writes beside the segment.
    pub fn set_aborted(&self, entries: Vec<u8>) {
        *self.aborted.borrow_mut() = entries;
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whole batches starting with the one that contains `offset`, up to `max_bytes` (the
    /// first batch even if larger, when `min_one`) and none from offset `upto` on, as a range
    /// of the file. `None` if `offset` is past this segment or at `upto`. Reads only the batch
    /// headers it walks; the range ends at a batch boundary the index or the segment's size
    /// gives, so no data is read to find it (unless `upto` falls inside the segment).
    pub async fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        upto: i64,
    ) -> io::Result<Option<FileRange>> {
        let mut size = self.size.get();
        // Compaction can leave a segment with no batches at all.
        if size == 0 || offset >= self.next_offset.get() || offset >= upto {
            return Ok(None);
        }
        if upto < self.next_offset.get() {
            // The high watermark is inside: the range ends where its batch starts.
            size = self.position_of(upto).await?;
        }
        // A consumer reading on from where its last read ended asks for an indexed batch (the
        // ends below are index entries) or a segment's first: then no header needs reading.
        let relative = (offset - self.base_offset).max(0) as u32;
        let (indexed_offset, indexed_pos) = self.index.borrow().lookup_entry(relative);
        let start = if indexed_offset == relative {
            indexed_pos as u64
        } else {
            match self.locate(indexed_pos as u64, offset, size).await? {
                Some((start, _)) => start,
                None => return Ok(None),
            }
        };
        let limit = start + max_bytes as u64;
        let indexed_end = self
            .index
            .borrow()
            .boundary_at_or_before(limit.min(u32::MAX as u64) as u32)
            .map(u64::from)
            .filter(|&end| end > start);
        let end = match indexed_end {
            _ if size <= limit => size,
            Some(end) => end,
            // No index entry within the budget: the first batch alone, if it fits or must go
            // (KIP-74). Only small budgets get here; it reads the one header at `start`.
            None => {
                let Some((_, first_len)) = self.locate(start, offset, size).await? else {
                    return Ok(None);
                };
                let first_end = start + first_len as u64;
                if first_end > limit && !min_one {
                    return Ok(None);
                }
                first_end
            }
        };
        Ok(Some(FileRange {
            file: self.reader().await?,
            offset: start,
            len: (end - start) as usize,
        }))
    }

    /// Where the batch holding `offset` starts (the size if no batch holds it).
    async fn position_of(&self, offset: i64) -> io::Result<u64> {
        if offset <= self.base_offset {
            return Ok(0);
        }
        let size = self.size.get();
        let from = self
            .index
            .borrow()
            .lookup((offset - self.base_offset) as u32);
        Ok(self
            .locate(from as u64, offset, size)
            .await?
            .map_or(size, |(pos, _)| pos))
    }

    /// Cuts the segment before the batch holding `offset` (a batch boundary): the file, synced,
    /// and its indexes. No write may be in flight. Rebuilding the indexes re-reads the batch
    /// headers before the cut; truncation is rare (a replica whose tail diverged from its
    /// leader's), and mostly hits the active segment.
    pub async fn truncate_to(&self, offset: i64, index_interval: u64) -> io::Result<()> {
        let pos = self.position_of(offset).await?;
        self.file.truncate(pos).await?;
        self.file.fdatasync().await?;
        self.allocated.set(pos);
        *self.last_write.borrow_mut() = None;
        self.next_offset.set(self.base_offset);
        self.max_timestamp.set(-1);
        let end = self.rebuild(0, pos, false, index_interval).await?;
        debug_assert_eq!(end, pos, "a cut falls on a batch boundary");
        for h in [self.index_path(), self.time_index_path()] {
            fs::remove_file(&h).await?;
        }
        self.size.set(pos);
        self.load_tail().await
    }

    /// Position and length of the first batch ending at or after `offset`, walking batch
    /// headers from position `from` (a batch start), one page read per header at most.
    async fn locate(&self, from: u64, offset: i64, size: u64) -> io::Result<Option<(u64, usize)>> {
        let mut pos = from;
        let mut page: Option<(u64, glommio::io::ReadResult)> = None;
        while pos < size {
            let header_end = (pos + batch::HEADER_LEN as u64).min(size);
            let cached = page
                .as_ref()
                .is_some_and(|(at, data)| *at <= pos && header_end <= at + data.len() as u64);
            if !cached {
                let at = pos & !(PAGE - 1);
                let len = (header_end - at).div_ceil(PAGE) * PAGE;
                page = Some((at, self.file.read_at(at, len as usize).await?));
            }
            let (at, data) = page.as_ref().expect("page read above");
            let header = BatchHeader::parse(&data[(pos - at) as usize..]).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("segment {}: batch at {pos}: {e}", self.path.display()),
                )
            })?;
            if header.last_offset() >= offset {
                return Ok(Some((pos, header.total_len())));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    async fn reader(&self) -> io::Result<Arc<std::fs::File>> {
        if let Some(file) = self.reader.borrow().as_ref() {
            return Ok(file.clone());
        }
        let path = self.path.clone();
        let file = Arc::new(fs::blocking(move || std::fs::File::open(path)).await?);
        Ok(self.reader.borrow_mut().get_or_insert(file).clone())
    }

    /// First record with timestamp >= `ts` in this segment: `(timestamp, offset)`.
    pub async fn find_timestamp(&self, ts: i64) -> io::Result<Option<(i64, i64)>> {
        if self.max_timestamp.get() < ts {
            return Ok(None);
        }
        let relative = self.time_index.borrow().scan_start(ts);
        let from = self.index.borrow().lookup(relative) as u64;
        let mut found = None;
        self.scan(from, self.size.get(), false, |pos, h, _| {
            if h.max_timestamp >= ts {
                found = Some((pos, *h));
                return false;
            }
            true
        })
        .await?;
        let Some((pos, header)) = found else {
            return Ok(None);
        };
        let data = self.file.read_at(pos, header.total_len()).await?;
        first_record_at_or_after(&data, ts)
    }

    /// Whole batches from position `pos` (a batch start): as many as fit in `chunk` bytes, or
    /// the one batch there, read whole, if it is larger. `None` at the segment's end.
    pub async fn read_batches(
        &self,
        pos: u64,
        chunk: usize,
    ) -> io::Result<Option<glommio::io::ReadResult>> {
        let size = self.size.get();
        match self.whole_batches(pos, size, chunk).await? {
            None if pos < size => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("segment {}: no whole batch at {pos}", self.path.display()),
            )),
            read => Ok(read),
        }
    }

    /// Starts writing this segment's replacement (`<base>.cleaned`), through a bounded buffer.
    pub async fn start_replacement(&self, dir: &Path) -> io::Result<Replacement> {
        let path = path_with(dir, self.base_offset, CLEANED);
        let file = fs::create_rw(&path).await?;
        let writer = glommio::io::DmaStreamWriterBuilder::new(file)
            .with_buffer_size(REPLACEMENT_BUFFER)
            .with_write_behind(2)
            .build();
        Ok(Replacement { path, writer })
    }

    /// Copies this segment's bytes `[from, to)` to `replacement`, a chunk at a time.
    pub async fn copy_to(
        &self,
        replacement: &mut Replacement,
        mut from: u64,
        to: u64,
    ) -> io::Result<()> {
        while from < to {
            let len = (to - from).min(SCAN_CHUNK as u64) as usize;
            let data = self.file.read_at(from, len).await?;
            replacement.write(&data).await?;
            from += len as u64;
        }
        Ok(())
    }

    /// Replaces this (sealed) segment's content with `replacement`'s atomically: it is synced
    /// and closed, the indexes removed (a crash before the rename keeps the old, intact file;
    /// after it, indexes are rebuilt), then renamed over the log file. Returns the new
    /// segment, sealed.
    pub async fn replace(
        &self,
        dir: &Path,
        replacement: Replacement,
        index_interval: u64,
    ) -> io::Result<Segment> {
        let Replacement { path, mut writer } = replacement;
        futures::AsyncWriteExt::close(&mut writer).await?;
        fs::remove_file(&self.index_path()).await?;
        fs::remove_file(&self.time_index_path()).await?;
        glommio::io::rename(&path, &self.path).await?;
        let (segment, _) =
            Segment::open(dir, self.base_offset, OpenMode::Sealed, index_interval).await?;
        segment.seal().await?;
        Ok(segment)
    }

    /// Removes the segment's files (with its aborted-transaction index, if any).
    pub async fn remove(&self) -> io::Result<()> {
        fs::remove_file(&self.path).await?;
        fs::remove_file(&crate::txn_index::path(&self.path)).await?;
        fs::remove_file(&self.index_path()).await?;
        fs::remove_file(&self.time_index_path()).await
    }

    pub fn size(&self) -> u64 {
        self.size.get()
    }
    pub fn next_offset(&self) -> i64 {
        self.next_offset.get()
    }
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.get()
    }
    pub fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }
    fn index_path(&self) -> PathBuf {
        self.path.with_extension("index")
    }
    fn time_index_path(&self) -> PathBuf {
        self.path.with_extension("timeindex")
    }
}

#[cfg(test)]
mod tests {
    use super::copy_span;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn copy_span_is_a_window_of_the_concatenation(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
            from in 0usize..200,
            len in 0usize..100,
        ) {
            let whole: Vec<u8> = parts.concat();
            let mut dst = vec![0xAA; len];
            copy_span(&mut dst, from, parts.iter().map(|p| &p[..]));
            let expected: Vec<u8> = (from..from + len).map(|i| whole.get(i).copied().unwrap_or(0)).collect();
            prop_assert_eq!(dst, expected);
        }
    }
}
