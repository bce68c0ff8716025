//! The segment writes a shard runs at once, shared by its partitions, with a limit that adapts
//! to the device.
//!
//! While every slot is busy, appends gather into larger writes. How many writes in flight
//! carry the most depends on the device: a fast SSD writes several at once (8 slots carry
//! about a third more than 1 here), while a device that takes a fixed time per request (a
//! throttled or congested volume) carries the most with one large write at a time, and many
//! small writes in flight leave it behind the load for good. So when writes back up (appends
//! wait for slots much of the time), the limit searches for what carries the most bytes per
//! second, preferring more writes in flight: it halves while that carries clearly more (5%),
//! climbs a slot at a time while that carries as much, and undoes a move that did not, then
//! stays a while before probing again. When writes do not back up, every slot is open again,
//! for the lowest latency. A backlog that lasts is logged.

use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How long the rate is measured before the limit moves.
const PERIOD: Duration = Duration::from_millis(100);
/// Writes are backed up when appends waited for a slot this share of a period.
const BACKED_UP: f64 = 1.0;
/// A rate this much below the last one counts as worse (the rest is noise).
const WORSE: f64 = 0.95;
/// Periods the limit stays put after a move was undone, or at an end, before it moves again:
/// most of the time goes to the best limit found, a little to probing.
const HOLD: u32 = 20;
/// A backlog lasting this long is logged (at most once per this period, per shard).
const BACKLOG_LOGGED_AFTER: Duration = Duration::from_secs(1);
const BACKLOG_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct WriteSlots {
    sem: Rc<Semaphore>,
    max: usize,
    limit: Cell<usize>,
    /// Slots to take back as writes complete: the limit fell while they were in use.
    owed: Cell<usize>,
    probe: RefCell<Probe>,
}

struct Probe {
    started: Instant,
    bytes: u64,
    writes: u64,
    /// Time appends spent waiting for a slot this period.
    waited: Duration,
    /// The rate of the last backed-up period (bytes per second).
    last_rate: f64,
    /// The limit before the last move.
    previous_limit: usize,
    /// Periods to stay at the limit before the next move.
    hold: u32,
    backed_up_since: Option<Instant>,
    logged: Option<Instant>,
    /// Device time of this period's writes, for the log line.
    write_time: Duration,
}

/// A slot, held while its write is in flight.
pub struct Slot {
    slots: Rc<WriteSlots>,
    issued: Instant,
}

impl WriteSlots {
    pub fn new(max: usize) -> Rc<WriteSlots> {
        let max = max.max(1);
        Rc::new(WriteSlots {
            sem: Rc::new(Semaphore::new(max as u64)),
            max,
            limit: Cell::new(max),
            owed: Cell::new(0),
            probe: RefCell::new(Probe {
                started: Instant::now(),
                bytes: 0,
                writes: 0,
                waited: Duration::ZERO,
                last_rate: 0.0,
                previous_limit: max,
                hold: 0,
                backed_up_since: None,
                logged: None,
                write_time: Duration::ZERO,
            }),
        })
    }

    /// Slots without a limit worth adapting (a log not shared by a shard).
    pub fn unlimited() -> Rc<WriteSlots> {
        WriteSlots::new(1 << 20)
    }

    /// Writes that may be in flight now.
    pub fn limit(&self) -> usize {
        self.limit.get()
    }

    /// Slots free now.
    pub fn available(&self) -> u64 {
        self.sem.available()
    }

    /// Waits for a slot. Fails only when the slots are closed.
    pub async fn acquire(self: &Rc<Self>) -> Result<Slot, ()> {
        let asked = Instant::now();
        self.sem.acquire(1).await.map_err(|_| ())?;
        let now = Instant::now();
        self.probe.borrow_mut().waited += now - asked;
        Ok(Slot {
            slots: self.clone(),
            issued: now,
        })
    }

    fn release(&self) {
        match self.owed.get() {
            0 => self.sem.signal(1),
            n => self.owed.set(n - 1),
        }
    }

    fn set_limit(&self, limit: usize) {
        let limit = limit.clamp(1, self.max);
        let old = self.limit.replace(limit);
        if limit > old {
            // Owed slots first: they are still in use.
            let mut more = limit - old;
            let repaid = more.min(self.owed.get());
            self.owed.set(self.owed.get() - repaid);
            more -= repaid;
            self.sem.signal(more as u64);
        } else {
            for _ in limit..old {
                match self.sem.try_acquire(1) {
                    Ok(true) => {}
                    _ => self.owed.set(self.owed.get() + 1),
                }
            }
        }
    }

    /// A write of `bytes` ended: counts it, and at the end of a period moves the limit.
    fn completed(&self, bytes: u64, took: Duration) {
        self.completed_at(bytes, took, Instant::now());
    }

    fn completed_at(&self, bytes: u64, took: Duration, now: Instant) {
        let mut p = self.probe.borrow_mut();
        p.bytes += bytes;
        p.writes += 1;
        p.write_time += took;
        let elapsed = now - p.started;
        if elapsed < PERIOD {
            return;
        }
        let rate = p.bytes as f64 / elapsed.as_secs_f64();
        let backed_up = p.waited.as_secs_f64() >= BACKED_UP * elapsed.as_secs_f64();
        let limit = self.limit.get();
        if backed_up {
            let moved = limit.cmp(&p.previous_limit);
            let next = if p.hold > 0 {
                p.hold -= 1;
                limit
            } else {
                match moved {
                    // Fewer writes are kept only when they carry clearly more.
                    Ordering::Less if rate > p.last_rate / WORSE => limit / 2,
                    Ordering::Greater if rate >= p.last_rate * WORSE => limit + 1,
                    Ordering::Less | Ordering::Greater => {
                        p.hold = HOLD;
                        p.previous_limit
                    }
                    // After a hold: probe down from the top, else up.
                    Ordering::Equal if limit == self.max => limit / 2,
                    Ordering::Equal => limit + 1,
                }
            }
            .clamp(1, self.max);
            if next == limit && p.hold == 0 {
                p.hold = HOLD;
            }
            p.last_rate = rate;
            p.previous_limit = limit;
            self.set_limit(next);
            let since = *p.backed_up_since.get_or_insert(now);
            if now - since >= BACKLOG_LOGGED_AFTER
                && p.logged.is_none_or(|t| now - t >= BACKLOG_LOG_EVERY)
            {
                p.logged = Some(now);
                tracing::warn!(
                    seconds = (now - since).as_secs(),
                    mb_per_sec = (rate / 1e6).round(),
                    writes_in_flight = next,
                    ms_per_write = p.write_time.as_secs_f64() * 1e3 / p.writes.max(1) as f64,
                    ms_waited_per_write = p.waited.as_secs_f64() * 1e3 / p.writes.max(1) as f64,
                    "appends are queueing for the device: it is what limits this shard's writes"
                );
            }
        } else {
            // Keeping up: every slot open, for the lowest latency; the next backlog starts
            // its search from there.
            self.set_limit(self.max);
            p.last_rate = 0.0;
            p.previous_limit = self.max;
            p.hold = 0;
            p.backed_up_since = None;
        }
        tracing::trace!(limit = self.limit.get(), rate, backed_up, "write slots");
        p.started = now;
        p.bytes = 0;
        p.writes = 0;
        p.waited = Duration::ZERO;
        p.write_time = Duration::ZERO;
    }
}

impl Slot {
    /// The write ended (on the device, or failed) having written `bytes`.
    pub fn done(self, bytes: u64) {
        self.slots.completed(bytes, self.issued.elapsed());
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `periods` periods against a model device that carries `carried(limit)` bytes per
    /// period while appends always wait (backed up); returns the limits the periods ran at.
    fn search(max: usize, periods: usize, carried: impl Fn(usize) -> u64) -> Vec<usize> {
        let slots = WriteSlots::new(max);
        let mut now = slots.probe.borrow().started;
        let mut limits = Vec::new();
        for _ in 0..periods {
            let limit = slots.limit();
            limits.push(limit);
            now += PERIOD;
            slots.probe.borrow_mut().waited = PERIOD;
            slots.completed_at(carried(limit), Duration::from_millis(1), now);
        }
        limits
    }

    #[test]
    fn a_device_with_a_cost_per_request_gets_one_write_at_a_time() {
        // Throttled to a fixed number of requests: fewer, larger writes carry more.
        let limits = search(8, 60, |limit| 100_000_000 / limit as u64);
        let settled = &limits[20..];
        let at_one = settled.iter().filter(|&&l| l == 1).count();
        assert!(at_one * 10 >= settled.len() * 8, "{limits:?}");
    }

    #[test]
    fn a_device_that_writes_in_parallel_keeps_its_slots() {
        // More in flight carries more, up to 8.
        let limits = search(8, 60, |limit| 10_000_000 * limit as u64);
        let settled = &limits[20..];
        let at_max = settled.iter().filter(|&&l| l == 8).count();
        assert!(at_max * 10 >= settled.len() * 7, "{limits:?}");
        // And a flat one (as much with any) stays at the top most of the time too.
        let limits = search(8, 60, |_| 50_000_000);
        let at_max = limits[20..].iter().filter(|&&l| l == 8).count();
        assert!(at_max * 10 >= 40 * 7, "{limits:?}");
    }

    #[test]
    fn writes_keeping_up_open_every_slot() {
        let slots = WriteSlots::new(8);
        slots.set_limit(2);
        let now = slots.probe.borrow().started + PERIOD;
        slots.completed_at(1000, Duration::from_millis(1), now);
        assert_eq!(slots.limit(), 8);
    }

    #[test]
    fn a_lower_limit_takes_slots_back_as_writes_end() {
        glommio::LocalExecutorBuilder::default()
            .spawn(|| async {
                let slots = WriteSlots::new(4);
                let held: Vec<Slot> = futures::future::join_all((0..3).map(|_| slots.acquire()))
                    .await
                    .into_iter()
                    .map(Result::unwrap)
                    .collect();
                slots.set_limit(1);
                assert_eq!(slots.sem.available(), 0, "the free slot is taken back");
                assert_eq!(slots.owed.get(), 2);
                drop(held);
                assert_eq!(slots.sem.available(), 1, "two more repaid, one is free");
                slots.set_limit(3);
                assert_eq!(slots.sem.available(), 3);
                assert_eq!(slots.owed.get(), 0);
            })
            .unwrap()
            .join()
            .unwrap();
    }
}
