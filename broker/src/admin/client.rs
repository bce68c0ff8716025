//! A small blocking Kafka client for the admin CLI (`tern group ...`). It runs in the CLI
//! process, never on a shard, so plain blocking sockets are right here.

use anyhow::{bail, Context, Result};
use bytes::{Buf, BufMut, BytesMut};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::{ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::messages::{
    BrokerId, FindCoordinatorRequest, ListOffsetsRequest, MetadataRequest, MetadataResponse,
    TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, HeaderVersion, Request, StrBytes};
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// What a coordinator coordinates (FindCoordinator's key type).
#[derive(Clone, Copy)]
pub enum CoordinatorKind {
    Group = 0,
    Transaction = 1,
}

pub struct Client {
    stream: TcpStream,
    correlation_id: i32,
    /// The broker's supported range per API key.
    versions: HashMap<i16, (i16, i16)>,
}

impl Client {
    pub fn connect(addr: &str) -> Result<Client> {
        let stream = TcpStream::connect(addr).with_context(|| format!("connect to {addr}"))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut client = Client {
            stream,
            correlation_id: 0,
            versions: HashMap::new(),
        };
        let resp = client.send_at(ApiVersionsRequest::default(), 3)?;
        if resp.error_code != 0 {
            bail!("ApiVersions failed with error {}", resp.error_code);
        }
        client.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(client)
    }

    /// The highest version of `R` both sides support.
    pub fn version<R: Request>(&self) -> Result<i16> {
        let (min, max) = *self
            .versions
            .get(&R::KEY)
            .with_context(|| format!("the broker does not support API {}", R::KEY))?;
        let version = max.min(R::VERSIONS.max);
        if version < min.max(R::VERSIONS.min) {
            bail!("no common version for API {}", R::KEY);
        }
        Ok(version)
    }

    /// Sends `req` at the highest version both sides support.
    pub fn send<R: Request>(&mut self, req: R) -> Result<R::Response> {
        let version = self.version::<R>()?;
        self.send_at(req, version)
    }

    fn send_at<R: Request>(&mut self, req: R, version: i16) -> Result<R::Response> {
        self.correlation_id += 1;
        let header = RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation_id)
            .with_client_id(Some(StrBytes::from_static_str("tern-cli")));
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        header.encode(&mut buf, R::header_version(version))?;
        req.encode(&mut buf, version)?;
        let size = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&size.to_be_bytes());
        self.stream.write_all(&buf).context("send request")?;
        let mut size = [0u8; 4];
        self.stream.read_exact(&mut size).context("read response")?;
        let mut body = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
        self.stream.read_exact(&mut body).context("read response")?;
        let mut body = bytes::Bytes::from(body);
        let header = ResponseHeader::decode(&mut body, R::Response::header_version(version))?;
        if header.correlation_id != self.correlation_id {
            bail!(
                "response to request {} arrived for {}",
                header.correlation_id,
                self.correlation_id
            );
        }
        let resp = R::Response::decode(&mut body, version)?;
        if body.has_remaining() {
            tracing::debug!(remaining = body.remaining(), "trailing bytes in response");
        }
        Ok(resp)
    }
}

/// The cluster as the CLI reaches it: a connection to a bootstrap broker, the nodes it names
/// and connections to them opened as needed (requests go to partition leaders and to the
/// controller).
pub struct Brokers {
    pub nodes: std::collections::BTreeMap<i32, String>,
    pub controller: i32,
    clients: HashMap<i32, Client>,
    bootstrap: Client,
}

impl Brokers {
    /// Connects to the first reachable of `brokers` (comma-separated) and learns the nodes.
    pub fn connect(brokers: &str) -> Result<Brokers> {
        let mut last = None;
        for addr in brokers.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match Client::connect(addr) {
                Ok(mut bootstrap) => {
                    let meta = bootstrap.send(
                        kafka_protocol::messages::MetadataRequest::default()
                            .with_topics(Some(vec![])),
                    )?;
                    let nodes = meta
                        .brokers
                        .iter()
                        .map(|b| (b.node_id.0, format!("{}:{}", b.host, b.port)))
                        .collect();
                    return Ok(Brokers {
                        nodes,
                        controller: meta.controller_id.0,
                        clients: HashMap::new(),
                        bootstrap,
                    });
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no broker given")))
    }

    pub fn bootstrap(&mut self) -> &mut Client {
        &mut self.bootstrap
    }

    /// A connection to node `id`.
    pub fn node(&mut self, id: i32) -> Result<&mut Client> {
        if !self.clients.contains_key(&id) {
            let addr = self
                .nodes
                .get(&id)
                .with_context(|| format!("node {id} is not in the cluster's metadata"))?;
            let client = Client::connect(addr)?;
            self.clients.insert(id, client);
        }
        Ok(self.clients.get_mut(&id).expect("inserted above"))
    }

    /// The node coordinating `key` (a group or a transactional id), as FindCoordinator asked of
    /// the bootstrap broker names it.
    pub fn coordinator(&mut self, key: &str, kind: CoordinatorKind) -> Result<&mut Client> {
        let key_str = StrBytes::from_string(key.to_string());
        let bootstrap = self.bootstrap();
        let req = if bootstrap.version::<FindCoordinatorRequest>()? >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![key_str])
        } else {
            FindCoordinatorRequest::default().with_key(key_str)
        };
        let resp = bootstrap.send(req.with_key_type(kind as i8))?;
        // v4+ answers per key, older versions at the top level.
        let (node, code) = match resp.coordinators.first() {
            Some(c) => (c.node_id.0, c.error_code),
            None => (resp.node_id.0, resp.error_code),
        };
        super::check(code, &format!("find the coordinator of {key}"))?;
        self.node(node)
    }

    /// Metadata of `topics` (all when `None`) as the bootstrap broker knows it.
    pub fn metadata(&mut self, topics: Option<&[String]>) -> Result<MetadataResponse> {
        let req = MetadataRequest::default()
            .with_allow_auto_topic_creation(false)
            .with_topics(topics.map(|ts| {
                ts.iter()
                    .map(|t| {
                        MetadataRequestTopic::default()
                            .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                    })
                    .collect()
            }));
        self.bootstrap().send(req)
    }

    /// ListOffsets at `timestamp` for `partitions` (by topic), asked of `leader`: per
    /// partition, its offset or its error code.
    pub fn offsets_at(
        &mut self,
        leader: i32,
        partitions: &BTreeMap<String, Vec<i32>>,
        timestamp: i64,
    ) -> Result<BTreeMap<(String, i32), Result<i64, i16>>> {
        let req = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(
                partitions
                    .iter()
                    .map(|(t, ps)| {
                        ListOffsetsTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t.clone())))
                            .with_partitions(
                                ps.iter()
                                    .map(|&p| {
                                        ListOffsetsPartition::default()
                                            .with_partition_index(p)
                                            .with_timestamp(timestamp)
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            );
        let resp = self.node(leader)?.send(req)?;
        Ok(resp
            .topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(move |p| (t.name.0.to_string(), p)))
            .map(|(t, p)| {
                let outcome = match p.error_code {
                    0 => Ok(p.offset),
                    code => Err(code),
                };
                ((t, p.partition_index), outcome)
            })
            .collect())
    }

    /// A connection to the controller (where topic changes go).
    pub fn controller(&mut self) -> Result<&mut Client> {
        if self.controller < 0 {
            bail!("the cluster has no controller right now; try again");
        }
        self.node(self.controller)
    }
}
