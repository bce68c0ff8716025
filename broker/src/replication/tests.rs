//! Three nodes in one executor, on loopback: real transports, real storage logs.

use super::*;
use crate::rpc::RpcConfig;
use glommio::net::TcpListener;
use tern_protocol::batch;
use tern_storage::{Durability, LogConfig};

use crate::rpc::tests::run;

fn client_batch(n: usize, tag: u8) -> Bytes {
    let records: Vec<_> = (0..n)
        .map(|i| batch::plain_record(i as i64, 1000, None, Some(vec![tag; 100].into())))
        .collect();
    batch::encode_plain(&records, kafka_protocol::records::Compression::None).unwrap()
}

const GROUP: GroupId = 1;

struct Node {
    replicator: Rc<Replicator>,
    log: Rc<PartitionLog>,
}

async fn cluster(dir: &std::path::Path, n: u64, log_config: LogConfig) -> Vec<Node> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut nodes = Vec::new();
    for (i, listener) in listeners.into_iter().enumerate() {
        let id = i as u64 + 1;
        let config = RpcConfig {
            node_id: id,
            cluster: "test".into(),
            peers: (1..=n)
                .filter(|&p| p != id)
                .map(|p| (p, addrs[p as usize - 1]))
                .collect(),
            kafka: String::new(),
            rack: None,
            rpc: addrs[i].to_string(),
            dial_from: None,
        };
        let (transport, inbound) = Transport::start(config, listener);
        let timing = Timing {
            tick: Duration::from_millis(10),
            ..Timing::default()
        };
        let home = StateHome::File(dir.join(format!("node{id}")));
        let replicator = Replicator::start(transport, timing, home).await.unwrap();
        let deliver = replicator.clone();
        glommio::spawn_local(async move {
            while let Some(envelope) = inbound.recv().await {
                deliver.deliver(envelope);
            }
        })
        .detach();
        let log = PartitionLog::open(&dir.join(format!("node{id}/t-0")), log_config.clone())
            .await
            .unwrap();
        replicator
            .add_group(GROUP, log.clone(), Membership::new(1..=n), None)
            .await
            .unwrap();
        nodes.push(Node { replicator, log });
    }
    nodes
}

/// The index of the node that leads, once one does (among `alive`).
async fn leader(nodes: &[Node], alive: &[usize]) -> usize {
    for _ in 0..2000 {
        for &i in alive {
            let role = nodes[i].replicator.role(GROUP).unwrap();
            if role.role == Role::Leader {
                return i;
            }
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    panic!("no leader elected");
}

/// Every batch of `log` up to its high watermark, as stored.
async fn committed_batches(log: &PartitionLog) -> Vec<Bytes> {
    let hw = log.high_watermark();
    let mut next = log.log_start_offset();
    let mut out = Vec::new();
    while next < hw {
        let data = log.read(next, 1 << 20, true).await.unwrap();
        for (pos, h) in batch::headers(&data) {
            out.push(data.slice(pos..pos + h.total_len()));
            next = h.last_offset() + 1;
        }
    }
    out
}

/// Proposes a batch on the leader and waits for acks=all; returns its offsets.
async fn produce(node: &Node, tag: u8) -> Result<(i64, i64), ReplicateError> {
    let p = node.replicator.propose(GROUP, client_batch(5, tag), 0)?;
    let committed = node.replicator.committed(GROUP, p.last_offset, p.term);
    crate::rpc::with_timeout(Duration::from_secs(10), committed)
        .await
        .unwrap_or_else(|| {
            let g = node.replicator.multi.borrow();
            let g = g.group(GROUP).unwrap();
            panic!(
                "batch {tag} never committed: end {} hw {} synced {} commit {} progress {:?}",
                node.log.end_offset(),
                node.log.high_watermark(),
                node.log.synced_offset(),
                g.commit(),
                (1..=3).map(|p| g.progress(p).cloned()).collect::<Vec<_>>()
            )
        })?;
    Ok((p.base_offset, p.last_offset))
}

async fn wait_for_hw(log: &PartitionLog, hw: i64) {
    for _ in 0..2000 {
        if log.high_watermark() >= hw {
            return;
        }
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    panic!(
        "high watermark stuck at {} (want {hw})",
        log.high_watermark()
    );
}

#[test]
fn three_replicas_commit_and_a_new_leader_keeps_every_acknowledged_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let nodes = cluster(&dir, 3, LogConfig::default()).await;
        let first = leader(&nodes, &[0, 1, 2]).await;
        // A follower refuses proposals and names the leader.
        let follower = (first + 1) % 3;
        match nodes[follower]
            .replicator
            .propose(GROUP, client_batch(1, 0), 0)
        {
            Err(ReplicateError::NotLeader { .. }) => {}
            other => panic!("a follower took a proposal: {other:?}"),
        }
        let mut acked = Vec::new();
        for tag in 0..20u8 {
            acked.push((tag, produce(&nodes[first], tag).await.unwrap()));
        }
        // acks=1 waits for the leader's own write only.
        let p = nodes[first]
            .replicator
            .propose(GROUP, client_batch(5, 20), 0)
            .unwrap();
        nodes[first]
            .log
            .wait(p.appended.as_ref().unwrap(), Durability::Written)
            .await
            .unwrap();
        nodes[first]
            .replicator
            .committed(GROUP, p.last_offset, p.term)
            .await
            .unwrap();
        acked.push((20, (p.base_offset, p.last_offset)));
        // Every replica holds the same committed bytes.
        let hw = nodes[first].log.high_watermark();
        for n in &nodes {
            wait_for_hw(&n.log, hw).await;
        }
        let reference = committed_batches(&nodes[first].log).await;
        for n in &nodes {
            assert_eq!(committed_batches(&n.log).await, reference);
        }
        // Raft's own entry is a control batch, stamped with the term, that consumers skip.
        let control = &reference[0];
        assert!(batch::BatchHeader::parse(control).unwrap().is_control());

        // The leader freezes: the others elect a new one, which has every acknowledged batch
        // at its offset, and takes new ones.
        nodes[first].replicator.set_paused(true);
        let alive: Vec<usize> = (0..3).filter(|&i| i != first).collect();
        let second = leader(&nodes, &alive).await;
        for tag in 21..30u8 {
            acked.push((tag, produce(&nodes[second], tag).await.unwrap()));
        }
        let hw = nodes[second].log.high_watermark();
        for &i in &alive {
            wait_for_hw(&nodes[i].log, hw).await;
        }
        let batches = committed_batches(&nodes[second].log).await;
        for &i in &alive {
            assert_eq!(committed_batches(&nodes[i].log).await, batches);
        }
        for (tag, (base, last)) in acked {
            let b = batches
                .iter()
                .find(|b| batch::base_offset(b) == base)
                .unwrap_or_else(|| panic!("acknowledged batch {tag} at {base} lost"));
            let h = batch::BatchHeader::parse(b).unwrap();
            assert_eq!(h.last_offset(), last);
            // The last record ends in its value, then a zero header count.
            assert_eq!(b[b.len() - 2], tag, "batch {tag} moved");
        }
    });
}

#[test]
fn a_follower_cut_off_catches_up_from_the_files_and_a_diverged_leader_is_truncated() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        // No batch cache: a follower that fell behind is fed from the segment files.
        let config = LogConfig {
            cache_bytes: 0,
            segment_bytes: 16 << 10,
            ..LogConfig::default()
        };
        let nodes = cluster(&dir, 3, config).await;
        let first = leader(&nodes, &[0, 1, 2]).await;
        let behind = (first + 1) % 3;
        nodes[behind].replicator.set_paused(true);
        let mut acked = Vec::new();
        for tag in 0..100u8 {
            acked.push((tag, produce(&nodes[first], tag).await.unwrap()));
        }
        nodes[behind].replicator.set_paused(false);
        let hw = nodes[first].log.high_watermark();
        wait_for_hw(&nodes[behind].log, hw).await;
        let reference = committed_batches(&nodes[first].log).await;
        assert_eq!(committed_batches(&nodes[behind].log).await, reference);

        // The leader is cut off with batches nobody else got (not acknowledged); the others
        // elect a leader and go on; when it returns, its extra tail is truncated.
        nodes[first].replicator.set_paused(true);
        let lost = nodes[first]
            .replicator
            .propose(GROUP, client_batch(5, 200), 0);
        let _ = lost;
        nodes[first].replicator.set_paused(true);
        let alive: Vec<usize> = (0..3).filter(|&i| i != first).collect();
        let second = leader(&nodes, &alive).await;
        for tag in 100..110u8 {
            acked.push((tag, produce(&nodes[second], tag).await.unwrap()));
        }
        nodes[first].replicator.set_paused(false);
        let hw = nodes[second].log.high_watermark();
        for n in &nodes {
            wait_for_hw(&n.log, hw).await;
        }
        let batches = committed_batches(&nodes[second].log).await;
        for n in &nodes {
            assert_eq!(committed_batches(&n.log).await, batches);
        }
        for (tag, (base, _)) in acked {
            let b = batches
                .iter()
                .find(|b| batch::base_offset(b) == base)
                .unwrap();
            assert_eq!(b[b.len() - 2], tag, "batch {tag} moved");
        }
        assert!(batches
            .iter()
            .all(|b| b[b.len() - 2] != 200 || batch::BatchHeader::parse(b).unwrap().is_control()));
    });
}

#[test]
fn messages_for_a_group_not_hosted_are_dropped_and_logged() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    run(move || async move {
        let nodes = cluster(&dir, 3, LogConfig::default()).await;
        let first = leader(&nodes, &[0, 1, 2]).await;
        let gone = (first + 1) % 3;
        nodes[gone].replicator.remove_group(GROUP).await.unwrap();
        // The leader still sends it the group's heartbeats: dropped, counted, logged.
        let deadline = Instant::now() + Duration::from_secs(30);
        while nodes[gone].replicator.unknown_logged.get().0 == 0 {
            assert!(
                Instant::now() < deadline,
                "no message for the removed group"
            );
            glommio::timer::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            nodes[gone]
                .replicator
                .multi
                .borrow()
                .unknown_group_messages()
                > 0
        );
        // Nothing is applied there, and the other two still commit.
        let (hw, end) = (
            nodes[gone].log.high_watermark(),
            nodes[gone].log.end_offset(),
        );
        produce(&nodes[first], 1).await.unwrap();
        assert_eq!(nodes[gone].log.high_watermark(), hw);
        assert_eq!(nodes[gone].log.end_offset(), end);
    });
}
