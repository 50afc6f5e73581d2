//! Event-time order across the co-partitioned topics of one partition number: what Kafka Streams
//! calls timestamp synchronisation (KIP-353, KIP-695).
//!
//! The three input topics and the repartition topic of a partition number share one profile
//! state and one stream clock. Read as they arrive, a small topic is read far ahead of a large
//! one, so the result would depend on fetch timing: a profile record stamped a minute ago makes
//! the backlog of storefront events "late", and the same input gives other outputs on every run.
//! So each topic's messages wait in a [`Heads`] queue, and the task takes, among the heads, the
//! one with the smallest record timestamp (ties: storefront, back office, profile, repartition).
//!
//! A topic with nothing buffered blocks the others while it has messages still to come (its
//! read position is below the high watermark the last fetch reported, or no fetch answered
//! yet, or a message of it arrived within the last [`FLOWING`]), for at most
//! `processing.max_idle`: then the others go on without it, counted in
//! `tailor_order_forced_total` (once per wait that ran out). A watermark that promised
//! messages that did not come (a transaction marker ends the log) is not trusted again for
//! that topic. A queue that grows past its limit while another topic is awaited pauses its
//! topic's fetching until it has drained to half. A topic read to its end blocks nothing: live traffic is not
//! delayed. The repartition topic never blocks the others: the group's own processing feeds
//! it, so waiting for it would put a broker round trip between two messages (measured: a
//! replay whose every event linked an identity fell from tens of thousands to 3,460 events/s).
//! Its messages are still taken in their place in time among what is buffered. So a replay of topics that hold the data already is processed in the same order
//! whatever the fetch timing, batch boundaries, crashes or restarts.
//!
//! The choice is the pure [`choose`]; the queues hold copies of the messages (freed once
//! applied). Messages buffered are not applied: a rollback or a hold drops them and seeks each
//! topic back to its first one ([`Heads::clear`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A message read and not yet applied.
pub struct Buffered {
    pub topic: Arc<str>,
    pub offset: i64,
    pub key: Option<Box<[u8]>>,
    pub payload: Box<[u8]>,
    pub timestamp: Option<i64>,
}

/// One topic's queue.
struct Queue {
    topic: Arc<str>,
    /// Tie-break among equal timestamps (the topic's place among the inputs).
    rank: u8,
    messages: VecDeque<Buffered>,
    /// Since when the queue has been empty (while empty).
    empty_since: Option<Instant>,
    /// When a message of the topic last arrived.
    last_push: Option<Instant>,
    /// Whether the others wait for it when it is empty (not for the repartition topic).
    awaited: bool,
    /// Its fetching is paused: the queue grew past the limit while another topic was awaited.
    paused: bool,
    /// Its high watermark promised messages that did not come within `max_idle` (a
    /// transaction marker at the end of the log, a stale watermark): from then on only a
    /// message just arrived ([`FLOWING`]) says more are coming.
    unreliable: bool,
    /// This empty spell's wait ran out already (counted once).
    overdue_noted: bool,
    /// When its high watermark last said it is read to its end (nothing arrived since).
    read_to_end_at: Option<Instant>,
}

/// How long a topic found read to its end is taken to stay so without asking again (unless a
/// message of it arrives, or its buffered messages are dropped to be read again). Asking is a
/// call into librdkafka per message applied (the topic looked up by name, its partition's
/// lock): 2.4–2.9 % of the processing threads' samples in the deep workload, whose back-office
/// and profile topics were asked about before every storefront event. A topic that holds all
/// its data (a replay) never changes its answer, so replays keep their order; with live
/// traffic, whose order depends on fetch timing anyway, a message fetched within those 10 ms
/// may be applied after a later one of another topic.
pub const READ_TO_END_FOR: Duration = Duration::from_millis(10);

/// A topic that delivered a message this recently is still flowing: more of what one fetch
/// brought is on its way (a broker's high watermark may lag behind what it serves).
pub const FLOWING: Duration = Duration::from_millis(250);

/// The state of one topic's head, for [`choose`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Head {
    /// A message is buffered, with this record timestamp (`None`: the producer set none).
    Ready(Option<i64>, u8),
    /// Nothing buffered, and messages are still to come: the others wait for it.
    Awaited,
    /// Nothing buffered, messages still to come, but waited for `max_idle`: the others go on
    /// without it.
    Overdue,
    /// Nothing buffered and nothing to wait for: read to its end.
    Done,
}

/// What a task does next.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Next {
    /// Apply the head of this topic (index into the heads given).
    Take(usize),
    /// An empty topic still has messages to come: wait for them.
    Wait,
    /// Nothing is buffered.
    Empty,
}

/// Picks the head with the smallest timestamp (no timestamp counts as earliest; ties by rank),
/// unless a topic with nothing buffered is still awaited.
pub fn choose(heads: &[Head]) -> Next {
    if heads.contains(&Head::Awaited) {
        return if heads.iter().any(|h| matches!(h, Head::Ready(..))) {
            Next::Wait
        } else {
            Next::Empty
        };
    }
    heads
        .iter()
        .enumerate()
        .filter_map(|(i, h)| match h {
            Head::Ready(ts, rank) => Some(((ts.unwrap_or(i64::MIN), *rank), i)),
            _ => None,
        })
        .min()
        .map_or(Next::Empty, |(_, i)| Next::Take(i))
}

/// The messages a partition task has read and not applied, per assigned topic.
#[derive(Default)]
pub struct Heads {
    queues: Vec<Queue>,
    buffered: usize,
    /// What [`Heads::heads`] last returned (kept: it runs for every message applied).
    scratch: Vec<Head>,
    /// [`READ_TO_END_FOR`], unless a test sets another.
    read_to_end_for: Option<Duration>,
}

impl Heads {
    /// A topic of the task, ranked `rank` among the inputs (ties go to the lower rank).
    /// `awaited`: whether, empty with messages still to come, it holds the others back.
    pub fn track(&mut self, topic: &str, rank: u8, awaited: bool) {
        if !self.queues.iter().any(|q| &*q.topic == topic) {
            self.queues.push(Queue {
                topic: Arc::from(topic),
                rank,
                messages: VecDeque::new(),
                empty_since: None,
                last_push: None,
                awaited,
                paused: false,
                unreliable: false,
                overdue_noted: false,
                read_to_end_at: None,
            });
        }
    }

    /// Whether a message of any topic is buffered, or arrived within [`FLOWING`].
    pub fn flowing(&self) -> bool {
        self.buffered > 0
            || self
                .queues
                .iter()
                .any(|q| q.last_push.is_some_and(|t| t.elapsed() < FLOWING))
    }

    /// How long until [`Self::flowing`] turns false if nothing more arrives: `None` when it is
    /// false already, or when messages are buffered (they are applied first).
    pub fn settles_in(&self) -> Option<Duration> {
        if self.buffered > 0 {
            return None;
        }
        self.queues
            .iter()
            .filter_map(|q| FLOWING.checked_sub(q.last_push?.elapsed()))
            .max()
    }

    /// The shared name of a tracked topic.
    pub fn topic(&self, topic: &str) -> Option<Arc<str>> {
        self.queues
            .iter()
            .find(|q| &*q.topic == topic)
            .map(|q| q.topic.clone())
    }

    /// Buffers a message of a tracked topic (others are ignored). A message at or below one
    /// already buffered (read again after a seek) replaces the queue from its offset on.
    /// Returns true when the topic's queue just passed `limit`: pause its fetching (Kafka
    /// Streams does the same), rather than apply out of order or buffer without bound.
    pub fn push(&mut self, msg: Buffered, limit: usize) -> bool {
        let Some(q) = self.queues.iter_mut().find(|q| *q.topic == *msg.topic) else {
            return false;
        };
        while q.messages.back().is_some_and(|m| m.offset >= msg.offset) {
            q.messages.pop_back();
            self.buffered -= 1;
        }
        q.messages.push_back(msg);
        q.empty_since = None;
        q.overdue_noted = false;
        q.last_push = Some(Instant::now());
        q.read_to_end_at = None;
        self.buffered += 1;
        if !q.paused && q.messages.len() > limit {
            q.paused = true;
            return true;
        }
        false
    }

    /// Puts a message taken with [`Self::pop`] back at the head of its queue (not applied after
    /// all: its partition is held).
    pub fn unpop(&mut self, i: usize, msg: Buffered) {
        if let Some(q) = self.queues.get_mut(i) {
            q.messages.push_front(msg);
            q.empty_since = None;
            self.buffered += 1;
        }
    }

    /// The paused topics whose queue has drained to half the limit: resume their fetching.
    pub fn drained_to_resume(&mut self, limit: usize) -> Vec<Arc<str>> {
        self.queues
            .iter_mut()
            .filter(|q| q.paused && q.messages.len() <= limit / 2)
            .map(|q| {
                q.paused = false;
                q.topic.clone()
            })
            .collect()
    }

    /// The keys of the messages buffered, all topics.
    pub fn keys(&self) -> impl Iterator<Item = &[u8]> {
        self.queues
            .iter()
            .flat_map(|q| q.messages.iter().filter_map(|m| m.key.as_deref()))
    }

    /// Messages buffered, all topics.
    pub fn len(&self) -> usize {
        self.buffered
    }

    /// The state of each tracked topic's head, in tracking order, and how many topics' waits
    /// ran out just now. `pending(topic)`: whether its high watermark says messages of it are
    /// still to come (being fetched, or no fetch answered yet).
    pub fn heads(
        &mut self,
        max_idle: Duration,
        mut pending: impl FnMut(&str) -> bool,
    ) -> (&[Head], u64) {
        let now = Instant::now();
        let read_to_end_for = self.read_to_end_for.unwrap_or(READ_TO_END_FOR);
        let mut ran_out = 0;
        self.scratch.clear();
        let heads = self.queues.iter_mut().map(|q| match q.messages.front() {
            Some(m) => Head::Ready(m.timestamp, q.rank),
            // Holds nothing back: no need to ask whether more is to come.
            None if !q.awaited => Head::Done,
            None => {
                let since = *q.empty_since.get_or_insert(now);
                let flowing = q.last_push.is_some_and(|t| now.duration_since(t) < FLOWING);
                let at_end = q
                    .read_to_end_at
                    .is_some_and(|t| now.duration_since(t) < read_to_end_for);
                let promised = !flowing && !q.unreliable && !at_end && {
                    let pending = pending(&q.topic);
                    if !pending {
                        q.read_to_end_at = Some(now);
                    }
                    pending
                };
                if !(flowing || promised) {
                    Head::Done
                } else if now.duration_since(since) >= max_idle {
                    if promised {
                        q.unreliable = true;
                    }
                    if !q.overdue_noted {
                        q.overdue_noted = true;
                        ran_out += 1;
                    }
                    Head::Overdue
                } else {
                    Head::Awaited
                }
            }
        });
        self.scratch.extend(heads);
        (&self.scratch, ran_out)
    }

    /// Takes the head of the `i`th tracked topic.
    pub fn pop(&mut self, i: usize) -> Option<Buffered> {
        let q = self.queues.get_mut(i)?;
        let m = q.messages.pop_front()?;
        self.buffered -= 1;
        if q.messages.is_empty() {
            q.empty_since = Some(Instant::now());
        }
        Some(m)
    }

    /// Each topic with messages buffered and the offset of its first.
    pub fn fronts(&self) -> Vec<(String, i64)> {
        self.queues
            .iter()
            .filter_map(|q| q.messages.front().map(|m| (q.topic.to_string(), m.offset)))
            .collect()
    }

    /// Drops every buffered message; returns each topic that had some and the offset of its
    /// first, to seek it back to. The caller resumes every topic (none stays paused for a full
    /// queue).
    pub fn clear(&mut self) -> Vec<(String, i64)> {
        let fronts = self.fronts();
        self.buffered = 0;
        for q in &mut self.queues {
            q.messages.clear();
            q.empty_since = None;
            q.overdue_noted = false;
            q.paused = false;
            // Read again from earlier positions (a rollback, a hold): asked afresh.
            q.read_to_end_at = None;
        }
        fronts
    }

    /// Forgets a topic no longer assigned.
    pub fn remove(&mut self, topic: &str) {
        if let Some(i) = self.queues.iter().position(|q| &*q.topic == topic) {
            self.buffered -= self.queues[i].messages.len();
            self.queues.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(topic: &str, offset: i64, ts: i64) -> Buffered {
        Buffered {
            topic: Arc::from(topic),
            offset,
            key: None,
            payload: Box::new([]),
            timestamp: Some(ts),
        }
    }

    #[test]
    fn the_earliest_head_goes_first_and_ties_go_by_rank() {
        use Head::*;
        assert_eq!(
            choose(&[Ready(Some(30), 0), Ready(Some(10), 1), Done]),
            Next::Take(1)
        );
        assert_eq!(
            choose(&[Ready(Some(10), 2), Ready(Some(10), 1)]),
            Next::Take(1)
        );
        assert_eq!(
            choose(&[Ready(Some(10), 0), Ready(None, 1)]),
            Next::Take(1),
            "no timestamp: first"
        );
        assert_eq!(choose(&[Done, Done]), Next::Empty);
        assert_eq!(choose(&[]), Next::Empty);
    }

    #[test]
    fn a_topic_still_to_come_holds_the_others_back() {
        use Head::*;
        assert_eq!(choose(&[Ready(Some(10), 0), Awaited]), Next::Wait);
        assert_eq!(choose(&[Awaited, Done]), Next::Empty);
        assert_eq!(
            choose(&[Overdue, Ready(Some(10), 1)]),
            Next::Take(1),
            "waited long enough: the others go on"
        );
        assert_eq!(
            choose(&[Ready(Some(10), 0), Done]),
            Next::Take(0),
            "read to its end: nothing to wait for"
        );
    }

    #[test]
    fn an_empty_topic_is_awaited_only_while_pending_and_not_longer_than_max_idle() {
        let mut h = Heads::default();
        h.track("s", 0, true);
        h.track("p", 2, true);
        h.track("r", 3, false);
        assert!(!h.push(msg("s", 5, 100), 100));
        let idle = Duration::from_millis(50);
        let ready = Head::Ready(Some(100), 0);
        assert_eq!(
            h.heads(idle, |t| {
                assert_ne!(t, "r", "a topic that holds nothing back is not asked about");
                true
            }),
            (&[ready, Head::Awaited, Head::Done][..], 0),
            "the repartition topic, fed by the workers themselves, holds nothing back"
        );
        assert_eq!(
            h.heads(idle, |_| false).0,
            [ready, Head::Done, Head::Done],
            "read to its end"
        );
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(
            h.heads(idle, |_| true),
            (&[ready, Head::Overdue, Head::Done][..], 1),
            "waited long enough: counted once"
        );
        assert_eq!(
            h.heads(idle, |_| true).0[1],
            Head::Done,
            "a watermark that promised what did not come is not trusted again"
        );
        assert!(!h.push(msg("p", 0, 50), 100));
        assert_eq!(
            h.heads(idle, |_| true).0,
            [ready, Head::Ready(Some(50), 2), Head::Done]
        );
        assert_eq!(h.pop(1).map(|m| m.offset), Some(0));
        assert_eq!(
            h.heads(idle, |_| false).0[1],
            Head::Awaited,
            "a message just arrived: more of its fetch may be on the way"
        );
        std::thread::sleep(FLOWING);
        assert_eq!(h.heads(idle, |_| true).0[1], Head::Done);
        h.push(msg("x", 0, 1), 100);
        assert_eq!(h.len(), 1, "a topic not tracked is ignored");
    }

    /// A topic found read to its end is not asked about again for [`READ_TO_END_FOR`], unless a
    /// message of it arrives or the buffered messages are dropped to be read again. (The window
    /// is set per step: no assertion depends on how fast the test runs.)
    #[test]
    fn a_topic_read_to_its_end_is_asked_about_again_after_a_while_a_message_or_a_clear() {
        let mut h = Heads::default();
        h.track("s", 0, true);
        h.track("b", 1, true);
        h.push(msg("s", 0, 100), 100);
        let idle = Duration::from_secs(3600);
        let asked = std::cell::Cell::new(0);
        let at_end = |_: &str| {
            asked.set(asked.get() + 1);
            false
        };
        h.read_to_end_for = Some(Duration::from_secs(3600));
        assert_eq!(h.heads(idle, at_end).0[1], Head::Done);
        assert_eq!(asked.get(), 1);
        // Within the window: the answer stands, even one that would now be "pending".
        assert_eq!(h.heads(idle, |_| true).0[1], Head::Done);
        assert_eq!(h.heads(idle, at_end).0[1], Head::Done);
        assert_eq!(asked.get(), 1);
        // The window over: asked again.
        h.read_to_end_for = Some(Duration::ZERO);
        assert_eq!(h.heads(idle, |_| true).0[1], Head::Awaited);
        assert_eq!(h.heads(idle, at_end).0[1], Head::Done);
        assert_eq!(asked.get(), 2);
        // A message of it: asked again once its queue is empty and it no longer flows.
        h.read_to_end_for = Some(Duration::from_secs(3600));
        assert_eq!(h.heads(idle, at_end).0[1], Head::Done);
        h.push(msg("b", 0, 50), 100);
        assert_eq!(h.pop(1).map(|m| m.offset), Some(0));
        std::thread::sleep(FLOWING);
        assert_eq!(h.heads(idle, |_| true).0[1], Head::Awaited);
        // Dropped to be read again (a rollback): asked again.
        assert_eq!(h.heads(idle, at_end).0[1], Head::Done);
        h.clear();
        assert_eq!(h.heads(idle, |_| true).0[1], Head::Awaited);
    }

    #[test]
    fn a_full_queue_pauses_its_topic_until_it_drains_to_half() {
        let mut h = Heads::default();
        h.track("s", 0, true);
        let paused: Vec<bool> = (0..5).map(|o| h.push(msg("s", o, o), 3)).collect();
        assert_eq!(paused, vec![false, false, false, true, false], "once");
        assert!(h.drained_to_resume(3).is_empty());
        for _ in 0..3 {
            h.pop(0);
        }
        assert!(
            h.drained_to_resume(3).is_empty(),
            "two left: more than half the limit"
        );
        h.pop(0);
        assert_eq!(
            h.drained_to_resume(3)
                .iter()
                .map(|t| &**t)
                .collect::<Vec<_>>(),
            vec!["s"]
        );
        assert!(h.drained_to_resume(3).is_empty(), "resumed once");
        let held = h.pop(0).unwrap();
        assert_eq!(held.offset, 4);
        h.unpop(0, held);
        assert_eq!(
            h.fronts(),
            vec![("s".to_string(), 4)],
            "put back at the head"
        );
    }

    #[test]
    fn a_message_read_again_after_a_seek_replaces_the_queue_from_its_offset() {
        let mut h = Heads::default();
        h.track("s", 0, true);
        h.track("b", 1, true);
        for o in 10..15 {
            h.push(msg("s", o, o), 100);
        }
        assert_eq!(h.len(), 5);
        h.push(msg("s", 12, 12), 100);
        assert_eq!(h.len(), 3, "12, 13, 14 dropped, 12 again");
        assert_eq!(h.pop(0).map(|m| m.offset), Some(10));
        h.push(msg("b", 3, 1), 100);
        let mut fronts = h.clear();
        fronts.sort();
        assert_eq!(fronts, vec![("b".into(), 3), ("s".into(), 11)]);
        assert_eq!(h.len(), 0);
        assert!(h.pop(0).is_none());
        h.remove("s");
        assert!(h.topic("s").is_none() && h.topic("b").is_some());
    }
}
