//! Record data as a read hands it out: batches held in memory (the batch cache), or a byte
//! range of a segment file that the network layer sends with sendfile, so cold data goes
//! from the file to the socket without passing through user space.

use bytes::{Bytes, BytesMut};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// A batch as the log holds it in memory: its header as the log rewrote it (offsets, epoch,
/// timestamps, CRC) and the rest exactly as the producer sent it, shared with the request
/// buffer it arrived in. So appending copies only the header; the one copy of the records is
/// into the segment's DMA buffer.
#[derive(Clone, Debug)]
pub struct StoredBatch {
    head: Bytes,
    rest: Bytes,
}

impl StoredBatch {
    pub fn new(head: Bytes, rest: Bytes) -> StoredBatch {
        StoredBatch { head, rest }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.rest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The start of the batch, holding at least its whole header.
    pub fn head(&self) -> &Bytes {
        &self.head
    }

    pub fn rest(&self) -> &Bytes {
        &self.rest
    }

    /// The batch as one buffer: shared when it is one already, else joined (a copy).
    pub fn to_contiguous(&self) -> Bytes {
        if self.rest.is_empty() {
            return self.head.clone();
        }
        let mut joined = BytesMut::with_capacity(self.len());
        joined.extend_from_slice(&self.head);
        joined.extend_from_slice(&self.rest);
        joined.freeze()
    }
}

impl From<Bytes> for StoredBatch {
    fn from(batch: Bytes) -> StoredBatch {
        StoredBatch::new(batch, Bytes::new())
    }
}

/// A range of whole batches in a segment file, opened for buffered reads. The open file keeps
/// the data readable even if retention or compaction removes the segment meanwhile.
#[derive(Clone, Debug)]
pub struct FileRange {
    pub file: Arc<File>,
    pub offset: u64,
    pub len: usize,
}

#[derive(Clone, Debug)]
pub enum Chunk {
    Memory(Bytes),
    File(FileRange),
}

impl Chunk {
    pub fn len(&self) -> usize {
        match self {
            Chunk::Memory(b) => b.len(),
            Chunk::File(r) => r.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whole record batches, in offset order.
#[derive(Clone, Debug, Default)]
pub struct Records {
    chunks: Vec<Chunk>,
    len: usize,
}

impl Records {
    pub fn push(&mut self, chunk: Chunk) {
        if !chunk.is_empty() {
            self.len += chunk.len();
            self.chunks.push(chunk);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn into_chunks(self) -> Vec<Chunk> {
        self.chunks
    }

    /// The bytes themselves: a single in-memory chunk as it is, anything else gathered into
    /// one buffer (file ranges are read on the blocking thread pool).
    pub async fn into_bytes(self) -> io::Result<Bytes> {
        if let [Chunk::Memory(b)] = self.chunks.as_slice() {
            return Ok(b.clone());
        }
        let mut out = BytesMut::with_capacity(self.len);
        for chunk in self.chunks {
            match chunk {
                Chunk::Memory(b) => out.extend_from_slice(&b),
                Chunk::File(r) => {
                    let data = crate::fs::blocking(move || {
                        let mut data = vec![0u8; r.len];
                        r.file.read_exact_at(&mut data, r.offset)?;
                        Ok(data)
                    })
                    .await?;
                    out.extend_from_slice(&data);
                }
            }
        }
        Ok(out.freeze())
    }
}

impl<'a> FromIterator<&'a StoredBatch> for Records {
    fn from_iter<I: IntoIterator<Item = &'a StoredBatch>>(iter: I) -> Records {
        let mut records = Records::default();
        for b in iter {
            records.push(Chunk::Memory(b.head.clone()));
            records.push(Chunk::Memory(b.rest.clone()));
        }
        records
    }
}
