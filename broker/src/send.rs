//! Writing a response made of pieces to a client socket without copying record data:
//! in-memory pieces (response headers, cached batches) go out together in one `sendmsg`;
//! segment file ranges go with `sendfile` (page cache to socket, never through user space)
//! on the shard's blocking thread pool, because reading the file may wait for the disk.

use futures::io::{AsyncWrite, AsyncWriteExt};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;
use tern_storage::Chunk;

/// How long a send on the blocking thread pool may wait for room in the socket buffer before
/// it hands the rest back (a slow consumer must not hold the pool's thread).
pub const SEND_TIMEOUT: Duration = Duration::from_millis(20);

/// Most bytes one `sendfile` call sends: the kernel keeps going while a slow reader makes
/// any progress, so calls are kept short enough for the time check between them to matter.
const SENDFILE_CHUNK: usize = 256 << 10;

/// Sets the socket's send timeout (SO_SNDTIMEO), which bounds the blocking sends above.
/// glommio's own sends never sleep in the kernel, so they are not affected.
pub fn set_send_timeout(fd: RawFd) -> io::Result<()> {
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: SEND_TIMEOUT.as_micros() as libc::suseconds_t,
    };
    // SAFETY: fd is an open socket; tv outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Position in a list of chunks: the chunk, and bytes of it already sent.
#[derive(Clone, Copy, Default, PartialEq, Eq)]
struct Cursor {
    index: usize,
    skip: usize,
}

impl Cursor {
    fn advance(&mut self, chunks: &[Chunk], mut sent: usize) {
        while sent > 0 {
            let left = chunks[self.index].len() - self.skip;
            if sent < left {
                self.skip += sent;
                return;
            }
            sent -= left;
            self.index += 1;
            self.skip = 0;
        }
    }
}

/// Writes `chunks` in order to the socket `fd`, which `writer` also writes to (it is used to
/// wait for room when the socket buffer is full).
pub async fn write_chunks(
    writer: &mut (impl AsyncWrite + Unpin),
    fd: RawFd,
    mut chunks: Vec<Chunk>,
) -> io::Result<()> {
    // An empty chunk would never advance the cursor below.
    chunks.retain(|c| !c.is_empty());
    let mut at = Cursor::default();
    while at.index < chunks.len() {
        if let Chunk::Memory(_) = &chunks[at.index] {
            let run_end = chunks[at.index..]
                .iter()
                .position(|c| matches!(c, Chunk::File(_)))
                .map_or(chunks.len(), |p| at.index + p);
            let more = run_end < chunks.len();
            let sent = send_memory(fd, &chunks[at.index..run_end], at.skip, more, true)?;
            at.advance(&chunks, sent);
            if at.index < run_end {
                // The socket buffer is full: let the reactor wait for room with this chunk.
                let Chunk::Memory(b) = &chunks[at.index] else {
                    unreachable!("inside a run of memory chunks")
                };
                writer.write_all(&b[at.skip..]).await?;
                at.advance(&chunks, b.len() - at.skip);
            }
            continue;
        }
        let (back, sent_to) = glommio::executor()
            .spawn_blocking(move || {
                let sent_to = send_blocking(fd, &chunks, at);
                (chunks, sent_to)
            })
            .await;
        chunks = back;
        let sent_to = sent_to?;
        if sent_to == at {
            // A consumer that reads slowly: give the pool's thread to others for a moment.
            glommio::timer::sleep(Duration::from_millis(1)).await;
        }
        at = sent_to;
    }
    Ok(())
}

/// Sends in-memory chunks with one `sendmsg`; returns the bytes sent (0 if `dont_wait` and the
/// socket buffer is full, or if a blocking send timed out).
fn send_memory(
    fd: RawFd,
    chunks: &[Chunk],
    skip: usize,
    more: bool,
    dont_wait: bool,
) -> io::Result<usize> {
    const MAX_IOV: usize = 512;
    let mut iov: Vec<libc::iovec> = Vec::with_capacity(chunks.len().min(MAX_IOV));
    for (i, chunk) in chunks.iter().take(MAX_IOV).enumerate() {
        let Chunk::Memory(b) = chunk else { break };
        let b = if i == 0 { &b[skip..] } else { &b[..] };
        iov.push(libc::iovec {
            iov_base: b.as_ptr() as *mut libc::c_void,
            iov_len: b.len(),
        });
    }
    let more = more || chunks.len() > iov.len();
    // SAFETY: msghdr is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    let mut flags = libc::MSG_NOSIGNAL;
    if more {
        flags |= libc::MSG_MORE;
    }
    if dont_wait {
        flags |= libc::MSG_DONTWAIT;
    }
    loop {
        // SAFETY: iov points into `chunks`, which outlive the call.
        let n = unsafe { libc::sendmsg(fd, &msg, flags) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => return Ok(0),
            _ => return Err(e),
        }
    }
}

/// Sends chunks from `at` on, blocking (bounded by SO_SNDTIMEO): memory with `sendmsg`, file
/// ranges with `sendfile`. Returns where it got to: the end, or where a timeout or about
/// SEND_TIMEOUT of sending stopped it. Runs on the blocking thread pool.
fn send_blocking(fd: RawFd, chunks: &[Chunk], mut at: Cursor) -> io::Result<Cursor> {
    let started = std::time::Instant::now();
    // Ask for every file range still to send at once, and more after each (where a
    // catching-up consumer's next fetches read): the disk gets a deep queue of reads instead of
    // sendfile's one readahead window at a time, and keeps reading while we send. The pages
    // behind the range (sent by earlier fetches) are dropped: a one-pass cold read should not
    // push hot data out of the page cache, and recycled pages are cheaper than new ones.
    // Pages still queued in a socket are not dropped (the kernel skips busy pages).
    for chunk in &chunks[at.index..] {
        if let Chunk::File(range) = chunk {
            let fd = range.file.as_raw_fd();
            let (offset, len) = (range.offset as libc::off_t, range.len as libc::off_t);
            // SAFETY: plain syscalls on an open fd. Advice only: failure changes nothing.
            unsafe {
                libc::posix_fadvise(fd, offset, 4 * len, libc::POSIX_FADV_WILLNEED);
                libc::posix_fadvise(
                    fd,
                    (offset - 2 * len).max(0),
                    (2 * len).min(offset),
                    libc::POSIX_FADV_DONTNEED,
                );
            };
        }
    }
    let from = at;
    while at.index < chunks.len() && (at == from || started.elapsed() < SEND_TIMEOUT) {
        let last = at.index + 1 == chunks.len();
        let sent = match &chunks[at.index] {
            Chunk::Memory(_) => send_memory(fd, &chunks[at.index..], at.skip, !last, false)?,
            Chunk::File(range) => {
                let mut offset = (range.offset + at.skip as u64) as libc::off_t;
                let len = (range.len - at.skip).min(SENDFILE_CHUNK);
                // SAFETY: both fds are open; offset is a valid pointer for the call.
                let n = unsafe { libc::sendfile(fd, range.file.as_raw_fd(), &mut offset, len) };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock => 0,
                        _ => return Err(e),
                    }
                } else if n == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "segment file shorter than the range being sent",
                    ));
                } else {
                    n as usize
                }
            }
        };
        if sent == 0 {
            break;
        }
        at.advance(chunks, sent);
    }
    Ok(at)
}
