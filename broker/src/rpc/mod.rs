//! The internal RPC of a node: the `--rpc-listen` listener, and one outgoing connection per peer
//! node, carrying Raft envelopes and node messages as `protocol::rpc` frames.
//!
//! Each direction of a node pair has its own connection, opened by the sender, so a node only
//! ever writes to connections it opened and reads from ones it accepted. Sending never waits:
//! each peer has a bounded queue, and an envelope that does not fit is dropped (Raft resends
//! what a follower misses; heartbeats come again next interval) and counted. Receiving applies
//! backpressure: a connection is read only as fast as the node takes its envelopes.
//!
//! Peers are the controller quorum's voters at start, then every node the metadata registers
//! ([`Transport::add_peer`]). A node of the same cluster that is not known yet may connect: that
//! is how a broker that is not a voter registers.
//!
//! Every shard of a node has its own outgoing connections (its replicas' envelopes go out on
//! them); shard 0 alone listens, and hands other shards the parts of envelopes for their
//! groups.

use bytes::{Bytes, BytesMut};
use futures::future::{select, Either};
use futures::io::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::rc::{Rc, Weak};
use std::time::Duration;
use tern_protocol::rpc::{self, Encoded, Frame, Hello, NodeFrame, NodeMessage};
use tern_raft::{Envelope, NodeId};

/// Frames queued per peer before sends are dropped.
const QUEUE_FRAMES: usize = 256;
/// Envelopes received and not yet taken before connections stop being read.
const INBOUND_FRAMES: usize = 256;
/// Node messages received and not yet taken before connections stop being read.
const INBOUND_MESSAGES: usize = 64;
/// A peer that connects must say hello within this.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect delays double from the first to the last.
const RECONNECT_MIN: Duration = Duration::from_millis(50);
const RECONNECT_MAX: Duration = Duration::from_secs(1);
/// Batch data smaller than this is copied into the frame's write buffer; larger batches are
/// written from their own buffers.
const COALESCE_BELOW: usize = 16 << 10;

/// Who this node is and whom it talks to.
#[derive(Clone, Debug)]
pub struct RpcConfig {
    pub node_id: NodeId,
    /// Nodes of another cluster are refused.
    pub cluster: String,
    /// The other nodes known at start (the controller quorum's voters) and their RPC
    /// addresses.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// This node's advertised Kafka listener, rack and RPC listener, told to peers in its
    /// hello.
    pub kafka: String,
    pub rack: Option<String>,
    pub rpc: String,
    /// The address this node dials other nodes from: its RPC listener's unless that is a
    /// wildcard. Its connections then come from the address it is known by, so firewall rules
    /// between two nodes (and the chaos tests' cut links) can name both ends.
    pub dial_from: Option<IpAddr>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum SendError {
    UnknownPeer(NodeId),
    /// The peer's queue is full (it is slow, or unreachable): the envelope was dropped.
    Full,
}

/// A shard's side of the internal RPC: its outgoing connections, and on shard 0 the listener.
pub struct Transport {
    config: Rc<RpcConfig>,
    peers: RefCell<BTreeMap<NodeId, Peer>>,
    dropped: Cell<u64>,
    /// The newest hello of each peer that connected (its Kafka listener and rack).
    hellos: Hellos,
    /// Node messages received, until the cluster takes them.
    messages: RefCell<Option<LocalReceiver<NodeFrame>>>,
}

/// An outgoing connection's queue; dropping it ends the connection's task.
struct Peer {
    addr: SocketAddr,
    queue: LocalSender<Encoded>,
    _alive: Rc<()>,
}

type Hellos = Rc<RefCell<BTreeMap<NodeId, Hello>>>;

/// Where received frames go.
struct Inbound {
    envelopes: LocalSender<Envelope>,
    messages: LocalSender<NodeFrame>,
}

impl Transport {
    /// Starts accepting on `listener` and connecting to every peer. Envelopes that arrive (from
    /// a known node of this cluster, addressed to this node, well-formed) come out of the
    /// returned receiver.
    pub fn start(
        config: RpcConfig,
        listener: TcpListener,
    ) -> (Rc<Transport>, LocalReceiver<Envelope>) {
        let config = Rc::new(config);
        let (envelopes, received) = local_channel::new_bounded(INBOUND_FRAMES);
        let (messages, messages_received) = local_channel::new_bounded(INBOUND_MESSAGES);
        let inbound = Rc::new(Inbound {
            envelopes,
            messages,
        });
        let hellos = Hellos::default();
        glommio::spawn_local(accept_loop(
            config.clone(),
            listener,
            inbound,
            hellos.clone(),
        ))
        .detach();
        let transport = Rc::new(Transport {
            config: config.clone(),
            peers: RefCell::new(BTreeMap::new()),
            dropped: Cell::new(0),
            hellos,
            messages: RefCell::new(Some(messages_received)),
        });
        for (&peer, &addr) in &config.peers {
            transport.add_peer(peer, addr);
        }
        (transport, received)
    }

    /// Connections to every peer, without a listener (a shard other than 0).
    pub fn outgoing(config: RpcConfig) -> Rc<Transport> {
        let config = Rc::new(config);
        let transport = Rc::new(Transport {
            config: config.clone(),
            peers: RefCell::new(BTreeMap::new()),
            dropped: Cell::new(0),
            hellos: Hellos::default(),
            messages: RefCell::new(None),
        });
        for (&peer, &addr) in &config.peers {
            transport.add_peer(peer, addr);
        }
        transport
    }

    /// Connects to node `peer` at `addr` (again, if it moved). Peers are never forgotten.
    pub fn add_peer(&self, peer: NodeId, addr: SocketAddr) {
        if peer == self.config.node_id
            || self
                .peers
                .borrow()
                .get(&peer)
                .is_some_and(|p| p.addr == addr)
        {
            return;
        }
        let (queue, rx) = local_channel::new_bounded(QUEUE_FRAMES);
        let alive = Rc::new(());
        glommio::spawn_local(connect_loop(
            self.config.clone(),
            peer,
            addr,
            rx,
            Rc::downgrade(&alive),
        ))
        .detach();
        self.peers.borrow_mut().insert(
            peer,
            Peer {
                addr,
                queue,
                _alive: alive,
            },
        );
    }

    /// The node messages received (once: the cluster takes them).
    pub fn take_messages(&self) -> Option<LocalReceiver<NodeFrame>> {
        self.messages.borrow_mut().take()
    }

    pub fn node_id(&self) -> NodeId {
        self.config.node_id
    }

    /// Queues `envelope` for its destination without waiting.
    /// A large envelope goes as several frames (see [`rpc::split_envelope`]).
    pub fn send(&self, envelope: &Envelope) -> Result<(), SendError> {
        match rpc::split_envelope(envelope) {
            None => self.send_frame(envelope.to, rpc::encode_envelope(envelope)),
            Some(pieces) => pieces
                .iter()
                .try_for_each(|p| self.send_frame(envelope.to, rpc::encode_envelope(p))),
        }
    }

    /// Queues a node message for node `to` without waiting.
    pub fn send_message(&self, to: NodeId, message: NodeMessage) -> Result<(), SendError> {
        let frame = rpc::encode_node(&NodeFrame {
            from: self.config.node_id,
            to,
            message,
        });
        self.send_frame(to, frame)
    }

    fn send_frame(&self, to: NodeId, frame: Encoded) -> Result<(), SendError> {
        let peers = self.peers.borrow();
        let peer = peers.get(&to).ok_or(SendError::UnknownPeer(to))?;
        peer.queue.try_send(frame).map_err(|_| {
            self.dropped.set(self.dropped.get() + 1);
            SendError::Full
        })
    }

    /// The newest hello of each peer that connected.
    pub fn hellos(&self) -> BTreeMap<NodeId, Hello> {
        self.hellos.borrow().clone()
    }

    /// Envelopes dropped because a peer's queue was full.
    #[cfg(test)]
    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }
}

async fn connect_loop(
    config: Rc<RpcConfig>,
    peer: NodeId,
    addr: SocketAddr,
    queue: LocalReceiver<Encoded>,
    alive: Weak<()>,
) {
    let hello = rpc::encode_hello(&Hello {
        version: rpc::VERSION,
        cluster: config.cluster.clone(),
        from: config.node_id,
        to: peer,
        kafka: config.kafka.clone(),
        rack: config.rack.clone().unwrap_or_default(),
        rpc: config.rpc.clone(),
    });
    let mut delay = RECONNECT_MIN;
    let mut scratch = Vec::new();
    loop {
        let connect = async {
            match config.dial_from {
                Some(ip) => TcpStream::connect_from(SocketAddr::new(ip, 0), addr).await,
                None => TcpStream::connect(addr).await,
            }
        };
        let stream = match with_timeout(CONNECT_TIMEOUT, connect).await {
            Some(Ok(stream)) => stream,
            _ => {
                if alive.upgrade().is_none() {
                    return; // the peer moved: another task connects to it
                }
                // Frames queued meanwhile wait: the queue bounds them.
                glommio::timer::sleep(delay).await;
                delay = (delay * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        if write_frame(&mut stream, &hello, &mut scratch)
            .await
            .is_err()
        {
            continue;
        }
        tracing::info!(peer, %addr, "connected to node");
        delay = RECONNECT_MIN;
        loop {
            let Some(frame) = queue.recv().await else {
                return; // the transport is gone
            };
            if let Err(error) = write_frame(&mut stream, &frame, &mut scratch).await {
                // The frame is lost; Raft resends what matters.
                tracing::info!(peer, %addr, %error, "connection to node lost; reconnecting");
                break;
            }
        }
    }
}

pub async fn with_timeout<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Option<T> {
    match select(Box::pin(f), Box::pin(glommio::timer::sleep(limit))).await {
        Either::Left((v, _)) => Some(v),
        Either::Right(_) => None,
    }
}

/// Writes a frame: small pieces gathered into one buffer, large batches from their own.
async fn write_frame(
    stream: &mut TcpStream,
    frame: &Encoded,
    scratch: &mut Vec<u8>,
) -> std::io::Result<()> {
    scratch.clear();
    scratch.extend_from_slice(&frame.head);
    for data in &frame.data {
        if data.len() < COALESCE_BELOW {
            scratch.extend_from_slice(data);
            continue;
        }
        stream.write_all(scratch).await?;
        scratch.clear();
        stream.write_all(data).await?;
    }
    if !scratch.is_empty() {
        stream.write_all(scratch).await?;
    }
    Ok(())
}

async fn accept_loop(
    config: Rc<RpcConfig>,
    listener: TcpListener,
    inbound: Rc<Inbound>,
    hellos: Hellos,
) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                let (config, inbound, hellos) = (config.clone(), inbound.clone(), hellos.clone());
                glommio::spawn_local(async move {
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    if let Err(why) = serve(&config, stream, &inbound, &hellos).await {
                        tracing::warn!(%peer, %why, "closing internal RPC connection");
                    }
                })
                .detach();
            }
            Err(e) => {
                tracing::warn!(error = %e, "internal RPC accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Reads one frame; `None` at a clean end of the stream.
async fn read_frame(stream: &mut TcpStream) -> Result<Option<Bytes>, String> {
    let mut prefix = [0u8; 4];
    match stream.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.to_string()),
    }
    let len = rpc::frame_length(prefix).map_err(|e| e.to_string())?;
    let mut body = BytesMut::zeroed(len);
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Some(body.freeze()))
}

/// One accepted connection: a hello from another node of this cluster calling this node, then
/// envelopes and node messages from it to this node. Anything else closes the connection (the
/// error says why) with nothing of it applied.
async fn serve(
    config: &RpcConfig,
    mut stream: TcpStream,
    inbound: &Inbound,
    hellos: &RefCell<BTreeMap<NodeId, Hello>>,
) -> Result<(), String> {
    let first = with_timeout(HELLO_TIMEOUT, read_frame(&mut stream))
        .await
        .ok_or("no hello in time")??
        .ok_or("closed before hello")?;
    let hello = match rpc::decode(first).map_err(|e| e.to_string())? {
        Frame::Hello(h) => h,
        Frame::Envelope(_) | Frame::Node(_) => return Err("a message before hello".into()),
    };
    if hello.version != rpc::VERSION {
        return Err(format!("protocol version {}", hello.version));
    }
    if hello.cluster != config.cluster {
        return Err(format!("node of another cluster ({:?})", hello.cluster));
    }
    if hello.to != config.node_id {
        return Err(format!("hello for node {}", hello.to));
    }
    if hello.from == config.node_id {
        return Err(format!("hello from this node's own id {}", hello.from));
    }
    tracing::info!(peer = hello.from, kafka = %hello.kafka, "node connected");
    hellos.borrow_mut().insert(hello.from, hello.clone());
    while let Some(frame) = read_frame(&mut stream).await? {
        let addressed = |from, to| from == hello.from && to == config.node_id;
        let envelope = match rpc::decode(frame) {
            Ok(Frame::Envelope(e)) => e,
            Ok(Frame::Node(m)) if addressed(m.from, m.to) => {
                if inbound.messages.send(m).await.is_err() {
                    return Ok(());
                }
                continue;
            }
            Ok(Frame::Node(m)) => {
                return Err(format!(
                    "node {} sent a message from {} to {}",
                    hello.from, m.from, m.to
                ))
            }
            Ok(Frame::Hello(_)) => return Err("a second hello".into()),
            Err(e) => return Err(format!("node {}: {e}", hello.from)),
        };
        if !addressed(envelope.from, envelope.to)
            || !envelope
                .messages
                .iter()
                .all(|(_, m)| addressed(m.from, m.to))
        {
            return Err(format!(
                "node {} sent an envelope from {} to {}",
                hello.from, envelope.from, envelope.to
            ));
        }
        if inbound.envelopes.send(envelope).await.is_err() {
            return Ok(()); // the node is shutting down
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests;
