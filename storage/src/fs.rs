//! Small file helpers on top of glommio DMA files, for use on a shard (they never block it).

use glommio::io::{DmaFile, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

/// Runs a blocking filesystem call on glommio's blocking thread pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    glommio::executor().spawn_blocking(f).await
}

/// The total and available bytes of the filesystem holding `path`.
pub async fn disk_space(path: &Path) -> io::Result<(u64, u64)> {
    let path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    blocking(move || {
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is a NUL-terminated string and `st` a valid out-parameter.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let block = st.f_frsize as u64;
        Ok((st.f_blocks as u64 * block, st.f_bavail as u64 * block))
    })
    .await
}

pub async fn create_dir_all(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    blocking(move || std::fs::create_dir_all(dir)).await
}

pub async fn remove_dir_all(dir: &Path) -> io::Result<()> {
    let dir = dir.to_path_buf();
    blocking(move || match std::fs::remove_dir_all(&dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    })
    .await
}

pub async fn list_dir(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = dir.to_path_buf();
    blocking(move || {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            out.push(entry?.path());
        }
        out.sort();
        Ok(out)
    })
    .await
}

pub async fn exists(path: &Path) -> bool {
    let path = path.to_path_buf();
    blocking(move || Ok(path.exists())).await.unwrap_or(false)
}

pub async fn remove_file(path: &Path) -> io::Result<()> {
    match glommio::io::remove(path).await.map_err(io::Error::from) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

thread_local! {
    static PROBED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Makes glommio learn correctly whether the device under `dir` supports polled I/O.
///
/// glommio probes a device with a read on the first DMA file opened on it; on an empty file
/// that read succeeds even where polled I/O does not work, and every later read then fails
/// (EOPNOTSUPP). So, once per shard thread, open a file that has data first.
pub async fn probe_direct_io(dir: &Path) -> io::Result<()> {
    if PROBED.with(|p| p.get()) {
        return Ok(());
    }
    let path = dir.join(".direct-io-probe");
    let probe = path.clone();
    blocking(move || {
        if std::fs::metadata(&probe).map(|m| m.len()).unwrap_or(0) < 4096 {
            std::fs::write(&probe, [0u8; 4096])?;
        }
        Ok(())
    })
    .await?;
    DmaFile::open(&path).await?.close().await?;
    PROBED.with(|p| p.set(true));
    Ok(())
}

/// Opens (creating if needed) a file for direct I/O reads and writes, without truncating it.
pub async fn open_rw(path: &Path) -> io::Result<DmaFile> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await?)
}

/// Creates (or empties) a file for direct I/O reads and writes.
pub async fn create_rw(path: &Path) -> io::Result<DmaFile> {
    Ok(OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .dma_open(path)
        .await?)
}

/// Reads a whole (small) file; `None` if it does not exist.
pub async fn read_file(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let file = match DmaFile::open(path).await {
        Ok(f) => f,
        Err(e) => {
            let e: io::Error = e.into();
            return if e.kind() == io::ErrorKind::NotFound {
                Ok(None)
            } else {
                Err(e)
            };
        }
    };
    // glommio looks the size up by path: a file removed since it was opened reads as missing.
    let size = match file.file_size().await {
        Ok(size) => size,
        Err(e) => {
            let e: io::Error = e.into();
            let _ = file.close().await;
            return match e.kind() {
                io::ErrorKind::NotFound => Ok(None),
                _ => Err(e),
            };
        }
    };
    let data = if size == 0 {
        Vec::new()
    } else {
        file.read_at(0, size as usize).await?.to_vec()
    };
    file.close().await?;
    Ok(Some(data))
}

/// Writes `data` as the whole content of `path` and syncs it.
pub async fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    // Opened read-write: glommio probes each new device with a read.
    let file = create_rw(path).await?;
    if !data.is_empty() {
        let aligned = file.align_up(data.len() as u64) as usize;
        let mut buf = file.alloc_dma_buffer(aligned);
        let slice = buf.as_bytes_mut();
        slice[..data.len()].copy_from_slice(data);
        slice[data.len()..].fill(0);
        let written = file.write_at(buf, 0).await?;
        if written < data.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
        }
        file.truncate(data.len() as u64).await?;
    }
    file.fdatasync().await?;
    file.close().await?;
    Ok(())
}

/// Makes the directory's entries (files created, renamed or removed) durable.
pub async fn sync_dir(dir: &Path) -> io::Result<()> {
    let dir = glommio::io::Directory::open(dir).await?;
    dir.sync().await?;
    dir.close().await?;
    Ok(())
}

/// Replaces `path` atomically: write a temporary file, sync it, rename it over `path`. The
/// temporary name keeps the whole file name (`<name>.tmp`): files of one segment differ only
/// in their extension, and two of them may be written at once.
pub async fn write_file_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    write_file(&tmp, data).await?;
    glommio::io::rename(&tmp, path).await?;
    match path.parent() {
        Some(dir) => sync_dir(dir).await,
        None => Ok(()),
    }
}
