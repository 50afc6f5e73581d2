//! The worker's producer, and the brokers' acknowledgements of what it sends, counted per round.
//!
//! A commit needs three things of the records it sent: that every one of a batch's outputs is
//! acknowledged (or the first failure), the same of its changelog records, and the offset of
//! each changelog marker. rust-rdkafka's `FutureProducer` gave every record a future of its
//! own — a one-shot channel and a boxed sender allocated on the processing thread, sent on by
//! the producer's polling thread, then awaited one by one: 3 % of the processing threads'
//! samples in the wide bench's `perf` profile, and the largest item of the polling thread's.
//! Here a record carries a number in librdkafka's per-message opaque pointer instead: its
//! [`Round`] (a batch's outputs, its changelog records, its markers) and a slot for an offset
//! to keep. The delivery callback counts the record into its round, and the commit awaits the
//! count it sent ([`Acks::acknowledged`]): one map entry per round, no allocation per record.
//!
//! Rounds are numbered across the process, so that a producer replaced by a new one
//! ([`super::collector::Collector::renew_producer`]) cannot confuse a late report of the old
//! one's with a round of the new one's (each producer counts its own records anyway).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Poll, Waker};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{DeliveryResult, Message as _};
use rdkafka::producer::{ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;

use super::kafka::{forward_error, forward_log};

/// The worker's producer: outputs, repartition messages and changelog records.
pub type Producer = ThreadedProducer<Acks>;

/// Bits of a record's opaque number that hold its slot; the round is above them.
const SLOT_BITS: u32 = 24;
/// The most records of a round whose offsets are kept (slots 1 to this).
pub const MAX_SLOTS: usize = (1 << SLOT_BITS) - 1;

// A round's number and a slot share the opaque number: 40 bits of rounds (a million years of
// batches at thirty a second).
const _: () = assert!(
    usize::BITS == 64,
    "a record's opaque number holds a round and a slot"
);

static NEXT_ROUND: AtomicU64 = AtomicU64::new(1);

/// A set of records awaited together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Round(u64);

impl Round {
    /// A round no record was sent in yet.
    #[allow(clippy::new_without_default)]
    pub fn new() -> Round {
        Round(NEXT_ROUND.fetch_add(1, Ordering::Relaxed))
    }

    /// The opaque number of a record of this round. `slot` 0: only counted; `slot` ≥ 1: its
    /// offset is kept, the `slot - 1`-th of what [`Acks::acknowledged`] returns.
    pub fn opaque(self, slot: usize) -> usize {
        assert!(slot <= MAX_SLOTS, "slot {slot} beyond {MAX_SLOTS}");
        ((self.0 as usize) << SLOT_BITS) | slot
    }

    fn of(opaque: usize) -> (Round, usize) {
        (Round((opaque >> SLOT_BITS) as u64), opaque & MAX_SLOTS)
    }
}

/// A round's reports so far.
#[derive(Default)]
struct Tally {
    reported: usize,
    /// How many it sent, once a wait or an abandonment said so.
    sent: Option<usize>,
    /// Nobody waits for it any more: its entry goes when its last report comes.
    abandoned: bool,
    /// The first record that failed: its error and topic.
    failure: Option<(KafkaError, String)>,
    /// The offsets of its slotted records, by slot (−1 until reported).
    offsets: Vec<i64>,
    waker: Option<Waker>,
}

impl Tally {
    fn complete(&self) -> bool {
        self.sent.is_some_and(|n| self.reported >= n)
    }
}

/// Why a round was not acknowledged: the first failed record's error and topic.
#[derive(Debug)]
pub struct Failed {
    pub error: KafkaError,
    pub topic: String,
}

/// The producer's callbacks: librdkafka's logs and errors, and the delivery reports counted
/// into their rounds (on the producer's polling thread).
#[derive(Default)]
pub struct Acks {
    rounds: Mutex<HashMap<u64, Tally>>,
}

impl Acks {
    fn rounds(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tally>> {
        // A panic elsewhere while the map was held leaves counts that are still right.
        self.rounds.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves when the `sent` records of `round` are all acknowledged (with the offsets of
    /// its slotted records, by slot), or as soon as one of them failed. Dropped before then (a
    /// stop's grace ran out), the round is abandoned.
    pub async fn acknowledged(&self, round: Round, sent: usize) -> Result<Vec<i64>, Failed> {
        /// Abandons the round unless the wait ended.
        struct Waiting<'a> {
            acks: &'a Acks,
            round: Round,
            sent: usize,
            ended: bool,
        }
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if !self.ended {
                    self.acks.abandon(self.round, self.sent);
                }
            }
        }
        let mut waiting = Waiting {
            acks: self,
            round,
            sent,
            ended: false,
        };
        let result = std::future::poll_fn(|cx| {
            let mut rounds = self.rounds();
            if sent == 0 && !rounds.contains_key(&round.0) {
                return Poll::Ready(Ok(Vec::new()));
            }
            let tally = rounds.entry(round.0).or_default();
            tally.sent = Some(sent);
            if let Some((error, topic)) = tally.failure.take() {
                // The rest of its reports are dropped as they come.
                tally.abandoned = true;
                tally.waker = None;
                if tally.complete() {
                    rounds.remove(&round.0);
                }
                return Poll::Ready(Err(Failed { error, topic }));
            }
            if tally.complete() {
                let tally = rounds.remove(&round.0).expect("just looked up");
                return Poll::Ready(Ok(tally.offsets));
            }
            match &mut tally.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                w => *w = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
        // Ended either way: the entry is gone, or abandoned by the failure.
        waiting.ended = true;
        result
    }

    /// How many records of `round` were reported so far.
    pub fn reported(&self, round: Round) -> usize {
        self.rounds().get(&round.0).map_or(0, |t| t.reported)
    }

    /// Nobody will wait for `round`, of `sent` records (a batch rolled back): its reports are
    /// dropped as they come.
    pub fn abandon(&self, round: Round, sent: usize) {
        let mut rounds = self.rounds();
        if let Some(tally) = rounds.get_mut(&round.0) {
            tally.sent = Some(sent);
            tally.abandoned = true;
            tally.waker = None;
            if tally.complete() {
                rounds.remove(&round.0);
            }
        } else if sent > 0 {
            rounds.insert(
                round.0,
                Tally {
                    sent: Some(sent),
                    abandoned: true,
                    ..Tally::default()
                },
            );
        }
    }

    /// Rounds with an entry (waited for, abandoned with reports to come, or reported before
    /// their wait began).
    #[cfg(test)]
    fn open_rounds(&self) -> usize {
        self.rounds().len()
    }

    fn report(&self, opaque: usize, outcome: Result<i64, (&KafkaError, &str)>) {
        let (round, slot) = Round::of(opaque);
        let waker = {
            let mut rounds = self.rounds();
            let tally = rounds.entry(round.0).or_default();
            tally.reported += 1;
            match outcome {
                Ok(offset) if slot > 0 => {
                    if tally.offsets.len() < slot {
                        tally.offsets.resize(slot, -1);
                    }
                    tally.offsets[slot - 1] = offset;
                }
                Ok(_) => {}
                Err((error, topic)) => {
                    if tally.failure.is_none() && !tally.abandoned {
                        tally.failure = Some((error.clone(), topic.to_owned()));
                    }
                }
            }
            if tally.abandoned {
                if tally.complete() {
                    rounds.remove(&round.0);
                }
                None
            } else if tally.complete() || tally.failure.is_some() {
                tally.waker.take()
            } else {
                None
            }
        };
        // Woken with the map released.
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl ClientContext for Acks {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(error, reason);
    }
}

impl ProducerContext for Acks {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        match result {
            Ok(m) => self.report(opaque, Ok(m.offset())),
            Err((e, m)) => self.report(opaque, Err((e, m.topic()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::error::RDKafkaErrorCode;
    use std::sync::Arc;

    fn timed_out() -> KafkaError {
        KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
    }

    /// Polls a pinned wait once, with a waker that does nothing.
    fn poll_once<F: std::future::Future>(f: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        f.poll(&mut std::task::Context::from_waker(Waker::noop()))
    }

    /// A wait's outcome if it is ready at its first poll (the wait is dropped after).
    fn now<T>(f: impl std::future::Future<Output = T>) -> Option<T> {
        match poll_once(std::pin::pin!(f)) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_round_and_a_slot_share_the_opaque_number() {
        let r = Round::new();
        for slot in [0, 1, 2, MAX_SLOTS] {
            assert_eq!(Round::of(r.opaque(slot)), (r, slot));
        }
        assert_ne!(Round::new(), Round::new());
    }

    /// Reports before the wait began, after it, out of order: the wait ends at the count sent,
    /// with each slotted record's offset in its slot, and leaves no entry behind.
    #[test]
    fn a_round_is_acknowledged_when_every_record_is_reported() {
        let acks = Acks::default();
        let (r, other) = (Round::new(), Round::new());
        acks.report(r.opaque(2), Ok(41));
        acks.report(other.opaque(0), Ok(7));
        let mut wait = std::pin::pin!(acks.acknowledged(r, 3));
        assert!(poll_once(wait.as_mut()).is_pending(), "1 of 3 reported");
        acks.report(r.opaque(0), Ok(40));
        assert_eq!(acks.reported(r), 2);
        assert!(poll_once(wait.as_mut()).is_pending(), "2 of 3 reported");
        acks.report(r.opaque(1), Ok(39));
        let Poll::Ready(Ok(offsets)) = poll_once(wait.as_mut()) else {
            panic!("not acknowledged with every record reported");
        };
        assert_eq!(offsets, vec![39, 41]);
        assert_eq!(acks.open_rounds(), 1, "only the other round is left");
        assert_eq!(
            now(acks.acknowledged(other, 1)).unwrap().unwrap(),
            Vec::<i64>::new()
        );
        assert_eq!(
            now(acks.acknowledged(Round::new(), 0)).unwrap().unwrap(),
            Vec::<i64>::new()
        );
        assert_eq!(acks.open_rounds(), 0);
    }

    /// A failure ends the wait at once with the failed record's error and topic; the round's
    /// later reports are dropped and its entry goes with the last of them.
    #[test]
    fn the_first_failure_ends_the_wait() {
        let acks = Acks::default();
        let r = Round::new();
        acks.report(r.opaque(0), Ok(1));
        acks.report(r.opaque(0), Err((&timed_out(), "audience")));
        acks.report(
            r.opaque(0),
            Err((
                &KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge),
                "journeys",
            )),
        );
        let failed = now(acks.acknowledged(r, 4)).unwrap().unwrap_err();
        assert_eq!(failed.topic, "audience");
        assert_eq!(
            failed.error,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
        );
        assert_eq!(acks.open_rounds(), 1, "one report to come");
        acks.report(r.opaque(0), Ok(3));
        assert_eq!(acks.open_rounds(), 0);
    }

    /// A rolled-back batch's round: its reports, before and after, leave nothing behind and
    /// touch no other round.
    #[test]
    fn an_abandoned_round_is_forgotten_with_its_last_report() {
        let acks = Acks::default();
        let (r, next) = (Round::new(), Round::new());
        acks.report(r.opaque(0), Ok(1));
        acks.abandon(r, 3);
        acks.report(r.opaque(0), Err((&timed_out(), "audience")));
        assert_eq!(acks.open_rounds(), 1);
        acks.report(r.opaque(0), Ok(2));
        assert_eq!(acks.open_rounds(), 0);
        // Abandoned before any report, and with nothing sent.
        acks.abandon(next, 1);
        acks.abandon(Round::new(), 0);
        assert_eq!(acks.open_rounds(), 1);
        acks.report(next.opaque(0), Ok(5));
        assert_eq!(acks.open_rounds(), 0);
    }

    /// A wait given up before its round is acknowledged (a stop's grace ran out) abandons the
    /// round: its later reports leave nothing behind. A failure reported while a wait is
    /// pending ends it.
    #[test]
    fn a_wait_given_up_abandons_its_round() {
        let acks = Acks::default();
        let r = Round::new();
        acks.report(r.opaque(0), Ok(1));
        assert!(now(acks.acknowledged(r, 2)).is_none());
        acks.report(r.opaque(0), Ok(2));
        assert_eq!(acks.open_rounds(), 0);

        let failing = Round::new();
        {
            let mut wait = std::pin::pin!(acks.acknowledged(failing, 3));
            assert!(poll_once(wait.as_mut()).is_pending());
            acks.report(failing.opaque(0), Err((&timed_out(), "journeys")));
            let Poll::Ready(Err(failed)) = poll_once(wait.as_mut()) else {
                panic!("a failure reported did not end the wait");
            };
            assert_eq!(failed.topic, "journeys");
        }
        assert_eq!(acks.open_rounds(), 1, "two reports to come");
        acks.report(failing.opaque(0), Ok(1));
        acks.report(failing.opaque(0), Ok(2));
        assert_eq!(acks.open_rounds(), 0);
    }

    /// The waiting task is woken by the report that completes its round (on another thread, as
    /// the producer's polling thread reports).
    #[test]
    fn the_last_report_wakes_the_wait() {
        let acks = Arc::new(Acks::default());
        let r = Round::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let reporter = {
            let acks = acks.clone();
            std::thread::spawn(move || {
                for slot in 0..100 {
                    std::thread::sleep(std::time::Duration::from_micros(50));
                    acks.report(r.opaque(slot % 3), Ok(slot as i64));
                }
            })
        };
        let offsets = rt
            .block_on(async {
                tokio::time::timeout(
                    std::time::Duration::from_secs(30),
                    acks.acknowledged(r, 100),
                )
                .await
            })
            .expect("woken")
            .unwrap();
        reporter.join().unwrap();
        assert_eq!(offsets, vec![97, 98]);
    }
}
