//! The Kafka listener of one shard: accepts connections (SO_REUSEPORT spreads them across
//! shards), reads request frames, runs requests concurrently and answers them in order.

use bytes::Bytes;
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use glommio::sync::StaticPermit;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use tern_protocol::frame::{self, FrameError};
use tern_storage::Chunk;

use crate::buffers::FrameBuffer;
use crate::kafka;
use crate::send;
use crate::shard::Shard;

/// Requests one connection may have in flight before the shard stops reading from it.
const MAX_IN_FLIGHT: usize = 64;

/// What to do with a request once it has been handled.
pub enum Reply {
    Frame(Bytes),
    /// A response in pieces (Fetch): header bytes, cached batches, segment file ranges.
    Chunks(Vec<Chunk>),
    /// acks=0 produce: the client expects no response.
    Nothing,
    /// The request cannot be answered: close the connection after earlier replies.
    Close,
}

pub fn bind(shard: &Shard) -> anyhow::Result<TcpListener> {
    TcpListener::bind(shard.config.listen)
        .map_err(|e| anyhow::anyhow!("bind Kafka listener {}: {e}", shard.config.listen))
}

pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let shard = shard.clone();
                glommio::spawn_local(async move { serve(shard, stream).await }).detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    let peer: Rc<str> = stream
        .peer_addr()
        .map(|a| a.to_string())
        .unwrap_or_default()
        .into();
    let _ = stream.set_nodelay(true);
    let fd = stream.as_raw_fd();
    if let Err(e) = send::set_send_timeout(fd) {
        tracing::warn!(peer = %peer, error = %e, "cannot set send timeout; closing connection");
        return;
    }
    let (mut reader, mut writer) = stream.split();
    // Each request travels with the memory it holds, released once its answer is written.
    let (tx, rx) = local_channel::new_bounded::<(glommio::task::JoinHandle<Reply>, StaticPermit)>(
        MAX_IN_FLIGHT,
    );
    let writer_task = glommio::spawn_local(async move {
        while let Some((handle, _memory)) = rx.recv().await {
            match handle.await {
                Some(Reply::Frame(bytes)) => {
                    if writer.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                Some(Reply::Chunks(chunks)) => {
                    if let Err(e) = send::write_chunks(&mut writer, fd, chunks).await {
                        tracing::debug!(error = %e, "write response");
                        break;
                    }
                }
                Some(Reply::Nothing) => {}
                Some(Reply::Close) | None => break,
            }
        }
        let _ = writer.close().await;
    });
    loop {
        let mut size = [0u8; 4];
        if reader.read_exact(&mut size).await.is_err() {
            break;
        }
        let size = match frame::check_size(i32::from_be_bytes(size), shard.config.max_request_bytes)
        {
            Ok(size) => size,
            Err(e) => {
                tracing::warn!(peer = %peer, error = %e, "closing connection");
                break;
            }
        };
        let cap = shard.config.request_memory();
        let Ok(memory) = shard
            .request_memory
            .acquire_static_permit(size.clamp(1, cap) as u64)
            .await
        else {
            break;
        };
        let mut body = FrameBuffer::take(size);
        if reader.read_exact(body.as_mut()).await.is_err() {
            break;
        }
        let reply = handle_frame(&shard, &peer, body.freeze());
        let close = matches!(reply, Handled::Close);
        let handle = match reply {
            Handled::Task(task) => task,
            Handled::Now(reply) => glommio::spawn_local(async move { reply }).detach(),
            Handled::Close => glommio::spawn_local(async { Reply::Close }).detach(),
        };
        if tx.send((handle, memory)).await.is_err() || close {
            break;
        }
    }
    drop(tx);
    writer_task.await;
}

enum Handled {
    Task(glommio::task::JoinHandle<Reply>),
    Now(Reply),
    Close,
}

fn handle_frame(shard: &Rc<Shard>, peer: &Rc<str>, frame: Bytes) -> Handled {
    match frame::decode_request(frame.clone()) {
        Ok(request) => {
            let (shard, peer) = (shard.clone(), peer.clone());
            Handled::Task(
                glommio::spawn_local(async move { kafka::handle(shard, request, peer).await })
                    .detach(),
            )
        }
        Err(FrameError::UnsupportedVersion {
            api,
            version,
            correlation_id,
        }) => match kafka::unsupported_version_reply(api, version, correlation_id, frame) {
            Some(reply) => Handled::Now(reply),
            None => {
                tracing::warn!(peer = %peer, ?api, version, "unsupported API version; closing connection");
                Handled::Close
            }
        },
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "bad request; closing connection");
            Handled::Close
        }
    }
}
