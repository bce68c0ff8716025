//! A Kafka connection for the load generator, on glommio: requests can be pipelined (the
//! writer and reader halves are used by different tasks; answers come back in order).

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use std::collections::HashMap;

/// The broker's supported version range per API key.
pub type Versions = HashMap<i16, (i16, i16)>;

pub struct Writer {
    half: WriteHalf<TcpStream>,
    next_correlation: i32,
    pub versions: Versions,
}

pub struct Reader {
    half: ReadHalf<TcpStream>,
}

/// Connects and learns the broker's API versions.
/// Connects to the first broker of `brokers` (a comma-separated bootstrap list, as Kafka
/// clients take) that answers; returns its address too.
pub async fn connect_bootstrap(brokers: &str) -> Result<(Writer, Reader, String)> {
    let mut failed = None;
    for addr in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
        match connect(addr).await {
            Ok((w, r)) => return Ok((w, r, addr.to_string())),
            Err(e) => failed = Some(e),
        }
    }
    Err(failed.unwrap_or_else(|| anyhow::anyhow!("no broker in --brokers {brokers:?}")))
}

pub async fn connect(addr: &str) -> Result<(Writer, Reader)> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| anyhow::anyhow!("connect to {addr}: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| anyhow::anyhow!("set TCP_NODELAY: {e}"))?;
    let (r, w) = stream.split();
    let mut writer = Writer {
        half: w,
        next_correlation: 0,
        versions: HashMap::new(),
    };
    let mut reader = Reader { half: r };
    writer.send(&ApiVersionsRequest::default(), 3).await?;
    let resp = reader.recv::<ApiVersionsRequest>(3).await?;
    if resp.error_code != 0 {
        bail!("ApiVersions error {}", resp.error_code);
    }
    writer.versions = resp
        .api_keys
        .iter()
        .map(|k| (k.api_key, (k.min_version, k.max_version)))
        .collect();
    Ok((writer, reader))
}

impl Writer {
    /// The version to use for `R`: the highest both support, at most `preferred`.
    pub fn version<R: Request>(&self, preferred: i16) -> Result<i16> {
        let (min, max) = *self
            .versions
            .get(&R::KEY)
            .with_context(|| format!("broker does not support API {}", R::KEY))?;
        let v = max.min(preferred).min(R::VERSIONS.max);
        if v < min.max(R::VERSIONS.min) {
            bail!("no common version for API {}", R::KEY);
        }
        Ok(v)
    }

    /// Writes one request; its answer must be read with `Reader::recv` in the same order.
    pub async fn send<R: Request>(&mut self, req: &R, version: i16) -> Result<i32> {
        let size = req.compute_size(version).unwrap_or(256);
        self.send_with::<R>(version, size, |buf| req.encode(buf, version))
            .await
    }

    /// Writes one request of type `R` whose body `write_body` writes (about `size` bytes).
    pub async fn send_with<R: Request>(
        &mut self,
        version: i16,
        size: usize,
        write_body: impl FnOnce(&mut BytesMut) -> Result<()>,
    ) -> Result<i32> {
        self.next_correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.next_correlation)
            .with_client_id(Some(StrBytes::from_static_str("tern-bench")));
        let mut buf = BytesMut::with_capacity(size + 64);
        buf.put_i32(0);
        header.encode(&mut buf, R::header_version(version))?;
        write_body(&mut buf)?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.half.write_all(&buf).await.context("send request")?;
        Ok(self.next_correlation)
    }
}

impl Reader {
    pub async fn recv<R: Request>(&mut self, version: i16) -> Result<R::Response> {
        let mut size = [0u8; 4];
        self.half
            .read_exact(&mut size)
            .await
            .context("read response size")?;
        let mut body = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
        self.half
            .read_exact(&mut body)
            .await
            .context("read response")?;
        let mut body = Bytes::from(body);
        ResponseHeader::decode(&mut body, R::Response::header_version(version))?;
        let resp = R::Response::decode(&mut body, version)?;
        if body.has_remaining() {
            // Newer fields we did not ask for: ignore.
        }
        Ok(resp)
    }
}

/// One request and its answer on a fresh connection's halves.
pub async fn call<R: Request>(
    w: &mut Writer,
    r: &mut Reader,
    req: &R,
    preferred: i16,
) -> Result<R::Response> {
    let v = w.version::<R>(preferred)?;
    w.send(req, v).await?;
    r.recv::<R>(v).await
}
