//! The queues shards send each other work on: one bounded single-producer, single-consumer
//! queue per ordered pair of shards (glommio shared channels, which wake a parked executor).
//!
//! Bounded so that a shard that falls behind holds back the shards sending to it (a send waits
//! for room) instead of letting their messages pile up. This cannot deadlock: a shard's
//! receiving side only takes messages and spawns them as tasks; it never waits for anything
//! else, so every queue drains while its shard runs.

use glommio::channels::shared_channel::{
    self, ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender,
};

/// Messages one shard may have queued for another before the sender waits.
pub const QUEUE_CAPACITY: usize = 1024;

/// One shard's ends of the mesh, made on the main thread and connected on the shard's own
/// executor.
pub struct MeshEnds<T: Send> {
    /// To each other shard, by shard id (None: this shard).
    senders: Vec<Option<SharedSender<T>>>,
    /// From each other shard.
    receivers: Vec<SharedReceiver<T>>,
}

/// The mesh of `shards` shards: each one's ends, by shard id.
pub fn mesh<T: Send>(shards: usize, capacity: usize) -> Vec<MeshEnds<T>> {
    let mut senders: Vec<Vec<Option<SharedSender<T>>>> = (0..shards)
        .map(|_| (0..shards).map(|_| None).collect())
        .collect();
    let mut receivers: Vec<Vec<SharedReceiver<T>>> = (0..shards).map(|_| Vec::new()).collect();
    for (from, to_each) in senders.iter_mut().enumerate() {
        for (to, sender) in to_each.iter_mut().enumerate() {
            if from != to {
                let (tx, rx) = shared_channel::new_bounded(capacity);
                *sender = Some(tx);
                receivers[to].push(rx);
            }
        }
    }
    senders
        .into_iter()
        .zip(receivers)
        .map(|(senders, receivers)| MeshEnds { senders, receivers })
        .collect()
}

/// A shard's connected ends.
pub struct Connected<T: Send> {
    pub senders: Vec<Option<ConnectedSender<T>>>,
    pub receivers: Vec<ConnectedReceiver<T>>,
}

impl<T: Send + 'static> MeshEnds<T> {
    /// Connects this shard's ends on its executor. Each end waits for the other shard to
    /// connect its end, so every shard must connect (they do, first thing at start).
    pub async fn connect(self) -> Connected<T> {
        let senders = self.senders.into_iter().map(|sender| async move {
            match sender {
                Some(sender) => Some(sender.connect().await),
                None => None,
            }
        });
        let receivers = self.receivers.into_iter().map(|r| r.connect());
        let (senders, receivers) = futures::join!(
            futures::future::join_all(senders),
            futures::future::join_all(receivers)
        );
        Connected { senders, receivers }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A queue holds `capacity` messages; past that a sender must wait (`try_send` fails)
    /// until the receiver takes some.
    #[test]
    fn a_full_queue_holds_back_its_sender() {
        const CAPACITY: usize = 4;
        let (filled_tx, filled_rx) = mpsc::channel::<()>();
        let mut ends = mesh::<u32>(2, CAPACITY).into_iter();
        let (sender_ends, receiver_ends) = (ends.next().unwrap(), ends.next().unwrap());
        let sender = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let Connected { senders, .. } = sender_ends.connect().await;
                let to_1 = senders[1].as_ref().unwrap();
                for n in 0..CAPACITY as u32 {
                    assert!(to_1.try_send(n).is_ok(), "room for message {n}");
                }
                assert!(
                    to_1.try_send(99).is_err(),
                    "the full queue refuses one more"
                );
                filled_tx.send(()).unwrap();
                to_1.send(CAPACITY as u32).await.unwrap(); // waits for room
            })
            .unwrap();
        let receiver = glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let Connected { receivers, .. } = receiver_ends.connect().await;
                filled_rx.recv().unwrap();
                for n in 0..=CAPACITY as u32 {
                    assert_eq!(receivers[0].recv().await, Some(n));
                }
            })
            .unwrap();
        sender.join().unwrap();
        receiver.join().unwrap();
    }

    /// Three executors, each sending numbered messages to the others through queues smaller
    /// than what it sends: every message arrives, in order per sender.
    #[test]
    fn every_message_arrives_in_order_through_full_queues() {
        const SHARDS: usize = 3;
        const SENT: u32 = 100;
        let (got_tx, got_rx) = mpsc::channel();
        let executors: Vec<_> = mesh::<(usize, u32)>(SHARDS, 4)
            .into_iter()
            .enumerate()
            .map(|(me, ends)| {
                let got = got_tx.clone();
                glommio::LocalExecutorBuilder::default()
                    .spawn(move || async move {
                        let Connected { senders, receivers } = ends.connect().await;
                        let send = async {
                            for n in 0..SENT {
                                for sender in senders.iter().flatten() {
                                    sender.send((me, n)).await.unwrap();
                                }
                            }
                        };
                        let receive = futures::future::join_all(receivers.iter().map(|r| async {
                            let mut last: Option<(usize, u32)> = None;
                            for _ in 0..SENT {
                                let (from, n) = r.recv().await.unwrap();
                                assert_ne!(from, me);
                                assert_eq!(n, last.map_or(0, |(_, n)| n + 1), "in order");
                                last = Some((from, n));
                            }
                            SENT
                        }));
                        let (_, received) = futures::join!(send, receive);
                        got.send(received.iter().sum::<u32>()).unwrap();
                    })
                    .unwrap()
            })
            .collect();
        for e in executors {
            e.join().unwrap();
        }
        drop(got_tx);
        let total: u32 = got_rx.iter().sum();
        assert_eq!(total, SENT * (SHARDS as u32) * (SHARDS as u32 - 1));
    }
}
