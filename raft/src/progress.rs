use std::collections::VecDeque;

use crate::Offset;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProgressState {
    /// Where the follower's log matches is not known: one append at a time.
    Probe,
    /// The follower matches: appends are pipelined up to the in-flight window.
    Replicate,
}

/// What a leader knows of one follower (exists on the leader only, per group and follower).
#[derive(Clone, Debug)]
pub struct Progress {
    /// The follower's log matches the leader's and is synced up to here: counts toward commit.
    pub matched: Offset,
    /// The follower's log matches the leader's up to here (synced or not).
    pub match_end: Offset,
    /// Where the next append starts.
    pub next: Offset,
    pub state: ProgressState,
    /// In Probe: an append was sent and not answered yet.
    pub probe_sent: bool,
    /// Whether the follower answered since the last check-quorum.
    pub recent_active: bool,
    /// `match_end` as of the previous heartbeat answer, to tell a lost append from a slow one.
    pub last_heartbeat_match: Offset,
    /// The newest heartbeat round of this term the follower answered.
    pub heartbeat_round: u64,
    /// Ends and sizes of the appends in flight (Replicate).
    inflight: VecDeque<(Offset, usize)>,
    inflight_bytes: usize,
}

impl Progress {
    pub fn new(next: Offset) -> Self {
        Progress {
            matched: 0,
            match_end: 0,
            next,
            state: ProgressState::Probe,
            probe_sent: false,
            recent_active: false,
            last_heartbeat_match: 0,
            heartbeat_round: 0,
            inflight: VecDeque::new(),
            inflight_bytes: 0,
        }
    }

    pub fn become_probe(&mut self, next: Offset) {
        self.state = ProgressState::Probe;
        self.next = next;
        self.probe_sent = false;
        self.clear_inflight();
    }

    pub fn become_replicate(&mut self, next: Offset) {
        self.state = ProgressState::Replicate;
        self.next = next;
        self.probe_sent = false;
        self.clear_inflight();
    }

    fn clear_inflight(&mut self) {
        self.inflight.clear();
        self.inflight_bytes = 0;
    }

    /// Whether no append may be sent now.
    pub fn is_paused(&self, max_batches: usize, max_bytes: usize) -> bool {
        match self.state {
            ProgressState::Probe => self.probe_sent,
            ProgressState::Replicate => {
                self.inflight.len() >= max_batches || self.inflight_bytes >= max_bytes
            }
        }
    }

    /// An append ending at `end` carrying `bytes` was sent.
    pub fn sent(&mut self, end: Offset, bytes: usize) {
        match self.state {
            ProgressState::Probe => self.probe_sent = true,
            ProgressState::Replicate => {
                self.next = end;
                self.inflight.push_back((end, bytes));
                self.inflight_bytes += bytes;
            }
        }
    }

    /// The follower has everything up to `match_end`: the appends ending there are done.
    pub fn acked(&mut self, match_end: Offset) {
        while let Some(&(end, bytes)) = self.inflight.front() {
            if end > match_end {
                break;
            }
            self.inflight.pop_front();
            self.inflight_bytes -= bytes;
        }
    }

    pub fn has_inflight(&self) -> bool {
        !self.inflight.is_empty()
    }
}
