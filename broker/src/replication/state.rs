//! What a replica's Raft group persists besides its log: term, vote, the epoch table, the
//! configurations, and a high-watermark checkpoint. One file per node (`raft-state` in the
//! data directory) holds every replica's, by group, replaced atomically: a round that changes
//! the state of thousands of groups (a node restarting, a storm of elections) writes and syncs
//! one file, not thousands.
//!
//! Earlier versions kept one file per replica (`raft-state` in the partition directory); it is
//! still read for a group the node file does not name.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tern_raft::{
    EpochTable, GroupId, HardState, Membership, MembershipLog, Meta, NodeId, Offset, Term,
};

const FILE: &str = "raft-state";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Members {
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
}

impl From<&Membership> for Members {
    fn from(m: &Membership) -> Self {
        Members {
            voters: m.voters.iter().copied().collect(),
            learners: m.learners.iter().copied().collect(),
        }
    }
}

impl From<&Members> for Membership {
    fn from(m: &Members) -> Self {
        Membership {
            voters: m.voters.iter().copied().collect(),
            learners: m.learners.iter().copied().collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct File {
    term: Term,
    vote: Option<NodeId>,
    lost_data: bool,
    commit: Offset,
    base_term: Term,
    epochs: Vec<(Term, Offset)>,
    membership: Members,
    changes: Vec<(Offset, Members)>,
}

/// A replica's persisted Raft state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persisted {
    pub hard_state: HardState,
    pub meta: Meta,
    /// A high watermark that was durable on this replica when written.
    pub commit: Offset,
}

/// The node's state file in data directory `dir`, or (earlier versions) a replica's in its
/// partition directory `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Every replica's state, by group, as the node file holds it.
pub fn encode_node<'a>(states: impl Iterator<Item = (GroupId, &'a Persisted)>) -> Vec<u8> {
    let files: BTreeMap<GroupId, File> = states.map(|(g, p)| (g, p.to_file())).collect();
    serde_json::to_vec(&files).expect("serializes")
}

/// `None` if the file is damaged.
pub fn decode_node(data: &[u8]) -> Option<BTreeMap<GroupId, Persisted>> {
    let files: BTreeMap<GroupId, File> = serde_json::from_slice(data).ok()?;
    files
        .into_iter()
        .map(|(g, f)| Some((g, Persisted::from_file(f)?)))
        .collect()
}

impl Persisted {
    /// A replica's own file, as earlier versions wrote it.
    #[cfg(test)]
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.to_file()).expect("serializes")
    }

    fn to_file(&self) -> File {
        File {
            term: self.hard_state.term,
            vote: self.hard_state.vote,
            lost_data: self.hard_state.lost_data,
            commit: self.commit,
            base_term: self.meta.epochs.base_term(),
            epochs: self.meta.epochs.epochs().to_vec(),
            membership: self.meta.membership.base().into(),
            changes: self
                .meta
                .membership
                .changes()
                .iter()
                .map(|(o, m)| (*o, m.into()))
                .collect(),
        }
    }

    /// `None` if the file is damaged (it is replaced atomically, so only a bug or a bad disk
    /// does that).
    pub fn from_bytes(data: &[u8]) -> Option<Persisted> {
        Self::from_file(serde_json::from_slice(data).ok()?)
    }

    fn from_file(f: File) -> Option<Persisted> {
        let increasing =
            |a: &[(Term, Offset)]| a.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1);
        if !increasing(&f.epochs) || !f.changes.windows(2).all(|w| w[0].0 < w[1].0) {
            return None;
        }
        Some(Persisted {
            hard_state: HardState {
                term: f.term,
                vote: f.vote,
                lost_data: f.lost_data,
            },
            meta: Meta {
                epochs: EpochTable::from_parts(f.base_term, f.epochs),
                membership: MembershipLog::from_parts(
                    (&f.membership).into(),
                    f.changes.iter().map(|(o, m)| (*o, m.into())).collect(),
                ),
            },
            commit: f.commit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips() {
        let mut membership = MembershipLog::new(Membership::new([1, 2, 3]));
        membership.push(40, Membership::new([1, 2, 3, 4]));
        let p = Persisted {
            hard_state: HardState {
                term: 7,
                vote: Some(2),
                lost_data: false,
            },
            meta: Meta {
                epochs: EpochTable::from_parts(1, vec![(2, 10), (7, 30)]),
                membership,
            },
            commit: 35,
        };
        assert_eq!(Persisted::from_bytes(&p.to_bytes()), Some(p.clone()));
        assert_eq!(Persisted::from_bytes(b"{"), None);
        let node = encode_node([(3, &p), (9, &p)].into_iter());
        assert_eq!(decode_node(&node), Some([(3, p.clone()), (9, p)].into()));
        assert_eq!(decode_node(b"{\"3\": {}}"), None);
    }
}
