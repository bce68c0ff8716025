//! Two nodes in one executor, on loopback.

use super::*;
use futures::io::AsyncReadExt;
use tern_raft::{Body, Entry, Message, Payload};

/// Runs a test's async body on a glommio executor of its own.
pub(crate) fn run<F: std::future::Future<Output = ()> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .expect("executor")
        .join()
        .expect("join");
}

fn batch(base: i64, n: usize, epoch: i32) -> Bytes {
    use tern_protocol::batch::{encode_plain, plain_record, set_base_offset, set_leader_epoch};
    let records: Vec<_> = (0..n)
        .map(|i| plain_record(i as i64, 1000, None, Some(vec![b'v'; 10].into())))
        .collect();
    let mut b = encode_plain(&records, kafka_protocol::records::Compression::None)
        .unwrap()
        .to_vec();
    set_base_offset(&mut b, base);
    set_leader_epoch(&mut b, epoch);
    b.into()
}

fn append(from: NodeId, to: NodeId, base: u64) -> Envelope {
    let data = batch(base as i64, 4, 2);
    Envelope {
        from,
        to,
        messages: vec![(
            5,
            Message {
                from,
                to,
                term: 2,
                body: Body::Append {
                    prev_end: base,
                    prev_term: 1,
                    entries: vec![Entry {
                        base,
                        last: base + 3,
                        term: 2,
                        payload: Payload::Data(data),
                    }],
                    commit: base,
                },
            },
        )],
        heartbeats: Vec::new(),
        acks: Vec::new(),
    }
}

/// Two transports, nodes 1 and 2, that know each other.
type Node = (Rc<Transport>, LocalReceiver<Envelope>);

fn pair() -> (Node, Node, SocketAddr) {
    let l1 = TcpListener::bind("127.0.0.1:0").unwrap();
    // Node 2 listens on, and dials from, an address of its own (as the chaos tests' nodes do).
    let l2 = TcpListener::bind("127.0.0.2:0").unwrap();
    let (a1, a2) = (l1.local_addr().unwrap(), l2.local_addr().unwrap());
    let config = |me, peer, addr| RpcConfig {
        node_id: me,
        cluster: "test".into(),
        peers: [(peer, addr)].into(),
        kafka: format!("127.0.0.1:{}", 9090 + me),
        rack: None,
        rpc: String::new(),
        dial_from: (me == 2).then(|| "127.0.0.2".parse().unwrap()),
    };
    let one = Transport::start(config(1, 2, a2), l1);
    let two = Transport::start(config(2, 1, a1), l2);
    (one, two, a2)
}

async fn raw_hello(addr: SocketAddr, cluster: &str, from: NodeId, to: NodeId) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let hello = rpc::encode_hello(&Hello {
        version: rpc::VERSION,
        cluster: cluster.into(),
        from,
        to,
        kafka: String::new(),
        rack: String::new(),
        rpc: String::new(),
    });
    s.write_all(&hello.to_bytes()).await.unwrap();
    s
}

/// The node closed the connection (reads end) without sending anything.
async fn closed(mut s: TcpStream) {
    let mut buf = [0u8; 1];
    let n = with_timeout(Duration::from_secs(10), s.read(&mut buf)).await;
    assert!(
        matches!(n, Some(Ok(0)) | Some(Err(_))),
        "connection left open: {n:?}"
    );
}

#[test]
fn envelopes_travel_both_ways_with_their_batches() {
    run(|| async {
        let ((one, from_two), (two, from_one), _) = pair();
        for base in [10, 14, 18] {
            let sent = append(1, 2, base);
            one.send(&sent).unwrap();
            assert_eq!(from_one.recv().await.unwrap(), sent);
        }
        let back = append(2, 1, 0);
        two.send(&back).unwrap();
        assert_eq!(from_two.recv().await.unwrap(), back);
        // Each learned where the other serves Kafka clients.
        assert_eq!(two.hellos()[&1].kafka, "127.0.0.1:9091");
        assert_eq!(one.hellos()[&2].kafka, "127.0.0.1:9092");
        assert_eq!(one.send(&append(1, 7, 0)), Err(SendError::UnknownPeer(7)));
        // Node messages travel beside the envelopes.
        let messages = two.take_messages().unwrap();
        let message = NodeMessage::TransferLeader { group: 5, to: 2 };
        one.send_message(2, message.clone()).unwrap();
        let got = messages.recv().await.unwrap();
        assert_eq!((got.from, got.to, got.message), (1, 2, message));
        // An unreachable peer fills its queue; sends are then dropped, never waited for.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let lonely_addr = l.local_addr().unwrap();
        let (lonely, _rx) = Transport::start(
            RpcConfig {
                node_id: 3,
                cluster: "test".into(),
                peers: [(4, "127.0.0.1:1".parse().unwrap())].into(),
                kafka: String::new(),
                rack: None,
                rpc: String::new(),
                dial_from: None,
            },
            l,
        );
        let _ = lonely_addr;
        let mut full = 0;
        for _ in 0..QUEUE_FRAMES + 10 {
            if lonely.send(&append(3, 4, 0)) == Err(SendError::Full) {
                full += 1;
            }
        }
        assert!(full >= 10);
        assert_eq!(lonely.dropped(), full);
    });
}

#[test]
fn strangers_and_malformed_frames_are_refused_and_the_node_keeps_serving() {
    run(|| async {
        let ((one, _), (_, from_one), addr2) = pair();
        // Another cluster, a node claiming the callee's own id, a hello meant for another node.
        closed(raw_hello(addr2, "other", 1, 2).await).await;
        closed(raw_hello(addr2, "test", 2, 2).await).await;
        closed(raw_hello(addr2, "test", 1, 3).await).await;
        // An envelope before any hello.
        let mut s = TcpStream::connect(addr2).await.unwrap();
        s.write_all(&rpc::encode_envelope(&append(1, 2, 0)).to_bytes())
            .await
            .unwrap();
        closed(s).await;
        // A good hello, then: an absurd length; garbage; an envelope claiming another sender.
        let mut s = raw_hello(addr2, "test", 1, 2).await;
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        closed(s).await;
        let mut s = raw_hello(addr2, "test", 1, 2).await;
        s.write_all(&[0, 0, 0, 12, 2, 0, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7])
            .await
            .unwrap();
        closed(s).await;
        let mut s = raw_hello(addr2, "test", 1, 2).await;
        s.write_all(&rpc::encode_envelope(&append(3, 2, 0)).to_bytes())
            .await
            .unwrap();
        closed(s).await;
        let mut s = raw_hello(addr2, "test", 1, 2).await;
        let forged = NodeFrame {
            from: 3,
            to: 2,
            message: NodeMessage::TransferLeader { group: 5, to: 3 },
        };
        s.write_all(&rpc::encode_node(&forged).to_bytes())
            .await
            .unwrap();
        closed(s).await;
        // Nothing of that reached the node, and its real peer still gets through.
        let sent = append(1, 2, 40);
        one.send(&sent).unwrap();
        assert_eq!(from_one.recv().await.unwrap(), sent);
        assert!(with_timeout(Duration::from_millis(50), from_one.recv())
            .await
            .is_none());
    });
}

#[test]
fn a_node_not_known_yet_registers_by_connecting_and_is_then_reached() {
    run(|| async {
        let ((_, _), (two, from_one), addr2) = pair();
        // Node 9 (a broker that is not a voter) says hello; node 2 learns its listeners.
        let l9 = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr9 = l9.local_addr().unwrap();
        let (nine, from_two) = Transport::start(
            RpcConfig {
                node_id: 9,
                cluster: "test".into(),
                peers: [(2, addr2)].into(),
                kafka: "127.0.0.1:9099".into(),
                rack: None,
                rpc: addr9.to_string(),
                dial_from: None,
            },
            l9,
        );
        let sent = append(9, 2, 0);
        nine.send(&sent).unwrap();
        assert_eq!(from_one.recv().await.unwrap(), sent);
        assert_eq!(two.hellos()[&9].rpc, addr9.to_string());
        // Once registered it is a peer like any other.
        two.add_peer(9, addr9);
        let back = append(2, 9, 4);
        two.send(&back).unwrap();
        assert_eq!(from_two.recv().await.unwrap(), back);
    });
}
