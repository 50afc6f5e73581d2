//! The core's entry point: apply an event to a profile or fire its timer, re-evaluate its
//! segments, say who entered and who exited, and which journeys start. Synchronous, no I/O.
//!
//! Output ids are derived from the cause (profile key, segment or journey, direction, causing
//! event id or timer due time), so re-processing the same input after a crash gives the same ids
//! and consumers can drop duplicates.
//!
//! ## Time
//!
//! Rules run on stream time, never on the machine's clock. After each evaluation the profile
//! keeps `next_timer`: the earliest moment the passing of time alone may change a membership
//! (a window emptying, `since()` crossing its bound, a sequence's wait ending, an affinity
//! decaying below its threshold). The shell keeps a timer index on it and calls
//! [`Core::advance`] when the partition's clock passes it; an event for the profile fires its
//! due timers first. Either way each timer is evaluated *at its due time*, so a replay gives the
//! same outputs as the live run, whenever the clock got there.

use std::sync::Arc;

use compact_str::ToCompactString;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::event::Event;
use crate::identity::{self, Id, KeyKind, Refused};
use crate::journey::{self, Suppressed, Trigger};
use crate::profile::{Membership, PlaceHint, Profile, RecentChange, RECENT_CHANGES};
use crate::segments::{Ctx, SegmentSet};
use crate::undo::Undo;
use crate::wire::{AudienceChange, Cause, Direction, JourneyTrigger};

/// Where the causing message came from (carried into the output's cause).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl Source<'_> {
    /// The cause part of an output id for an event read here: its id and where it was read.
    pub fn cause_id(&self, event_id: &str) -> String {
        // `{event_id}@{topic}/{partition}/{offset}`, without the formatting machinery.
        let (partition, offset) = (
            self.partition.to_compact_string(),
            self.offset.to_compact_string(),
        );
        let mut id = String::with_capacity(
            event_id.len() + self.topic.len() + partition.len() + offset.len() + 3,
        );
        for (part, sep) in [
            (event_id, "@"),
            (self.topic, "/"),
            (&partition, "/"),
            (&offset, ""),
        ] {
            id.push_str(part);
            id.push_str(sep);
        }
        id
    }
}

/// Deterministic output id: 32 hex digits of a 128-bit hash of the parts.
pub fn output_id(parts: &[&str]) -> String {
    // On the stack for the usual lengths (a key, a segment, a direction and a cause id),
    // copied in place part by part.
    let len: usize = parts.iter().map(|p| p.len() + 1).sum();
    let mut stack = [0u8; 256];
    let mut heap = Vec::new();
    let buf = if len <= stack.len() {
        &mut stack[..len]
    } else {
        heap.resize(len, 0);
        &mut heap[..]
    };
    let mut at = 0;
    for p in parts {
        buf[at..at + p.len()].copy_from_slice(p.as_bytes());
        buf[at + p.len()] = 0x1f; // unit separator: ("ab","c") and ("a","bc") differ
        at += p.len() + 1;
    }
    hex32(xxh3_128(buf))
}

/// `format!("{:032x}", v)` without the formatting machinery (1 % of the core bench).
fn hex32(v: u128) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 32];
    for (pair, byte) in out.chunks_exact_mut(2).zip(v.to_be_bytes()) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
    // Every byte is an ASCII hex digit.
    std::str::from_utf8(&out).expect("ASCII").to_owned()
}

/// Everything one call of the core produced.
#[derive(Debug, Default)]
pub struct Outputs {
    pub changes: Vec<AudienceChange>,
    pub triggers: Vec<JourneyTrigger>,
    /// Journeys that matched but did not trigger: (journey id, why).
    pub suppressed: Vec<(String, Suppressed)>,
    /// Timers that fired (each one re-evaluates the profile at its due time).
    pub timers_fired: u64,
    /// Identities the event linked to the profile (each must be claimed on its partition).
    pub claims: Vec<Id>,
    /// Links refused, by reason.
    pub refused: Vec<Refused>,
}

impl Outputs {
    pub fn clear(&mut self) {
        self.changes.clear();
        self.triggers.clear();
        self.suppressed.clear();
        self.timers_fired = 0;
        self.claims.clear();
        self.refused.clear();
    }
}

/// What made an evaluation happen.
enum Why<'a> {
    Event(&'a Event, Source<'a>),
    /// A timer due at this time.
    Timer(i64),
    /// Another profile of the shopper (this key) was merged in.
    Merge(&'a str),
    /// The segment definitions changed (this version).
    Definitions(u64),
}

impl Why<'_> {
    /// The cause an output carries.
    fn cause(&self) -> Cause {
        match self {
            Why::Event(ev, source) => Cause {
                kind: "event".into(),
                event_id: Some(ev.id.clone()),
                event_type: Some(ev.kind.name().into()),
                segment_id: None,
                source_topic: Some(source.topic.into()),
                source_partition: Some(source.partition),
                source_offset: Some(source.offset),
            },
            Why::Timer(_) => Cause {
                kind: "timer".into(),
                ..Cause::default()
            },
            Why::Merge(_) => Cause {
                kind: "merge".into(),
                ..Cause::default()
            },
            Why::Definitions(_) => Cause {
                kind: "definition-change".into(),
                ..Cause::default()
            },
        }
    }

    /// What output ids are derived from, with the profile key and the segment or journey.
    fn cause_id(&self) -> String {
        match self {
            // The input position too: a producer that reuses an event id for another event
            // must not give two changes the same id.
            Why::Event(ev, source) => source.cause_id(&ev.id),
            // Without the formatting machinery: made at each timer that changes a membership
            // (its `format!` was 4 % of the timers' samples in a profile of the wide pass).
            Why::Timer(due) => ["timer@", &due.to_compact_string()].concat(),
            Why::Merge(from) => ["merge:", from].concat(),
            Why::Definitions(v) => format!("definitions:{v:016x}"),
        }
    }
}

/// What the explanation of a change compares the new evaluation with. The profile is boxed, and
/// the box kept between events ([`Core`]'s `before`): no allocation, and no copy of the
/// profile's bytes as it moves in and out.
enum Before {
    /// Nothing (definition changes: the rule itself changed).
    Nothing,
    /// The profile before the cause (what rules read of it), at the same moment (merges).
    Profile(Box<Profile>),
    /// The profile before the event, at the same moment: the profile after it with what
    /// [`Core`]'s `undo` recorded put back, made at the first change that needs it.
    Undone,
    /// The same profile a moment earlier (timers: only time moved).
    Earlier(i64),
}

/// Applies events, fires timers, evaluates segments and journeys; holds only scratch space.
pub struct Core {
    segments: Arc<SegmentSet>,
    results: Vec<bool>,
    /// The results before the cause, for explanations: of the segments that changed and those
    /// their rules use (the ones `before_done`).
    before_results: Vec<bool>,
    before_done: Vec<bool>,
    /// Kept between events for its allocations: the profile before the event. Boxed: moving
    /// the profile in and out by value showed as memmove in the core bench.
    before: Option<Box<Profile>>,
    /// What the event being applied changes of what rules read (for explanations).
    undo: Undo,
    /// Debug builds (the tests) also copy what rules read before each event, and check that
    /// the copy made from `undo` evaluates like it.
    #[cfg(debug_assertions)]
    check: Option<Box<Profile>>,
    explain: bool,
    nexts: Vec<Option<i64>>,
    /// Most identities linked to one profile.
    max_identities: usize,
    /// Each segment's place in the set, found from a membership's id or hint.
    places: Places,
    /// The stored memberships of the profile being evaluated, by place in the set.
    stored: Vec<bool>,
    /// Whether an event evaluates only the segments whose rules read something it changed
    /// ([`Core::set_incremental`]).
    incremental: bool,
    /// Segment evaluations left out because the event changed nothing their rules read.
    skipped: u64,
    /// Debug builds: the full evaluation each incremental one is checked against.
    #[cfg(debug_assertions)]
    check_results: Vec<bool>,
}

/// A generation no other core or definitions of this process have had ([`PlaceHint`]).
fn next_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Each segment's place in its set, by the hash of its id: a stored membership is looked up
/// once per evaluation, with one xxh3 of its id and a binary search over integers, confirmed by
/// comparing the id. (A binary search over the ids compared bytes at every step: 4–5 % of the
/// deep e2e profile; a `HashMap<String, _>` with xxh3's streaming hasher, which buffers each
/// key and hashes it twice, 6 %.)
///
/// A membership found once carries a [`PlaceHint`] under these places' `generation`, new for
/// every core and definitions: the next evaluation of the profile by them reads no id.
#[derive(Debug, Default)]
struct Places {
    /// (xxh3 of the id, place), sorted.
    by_hash: Vec<(u64, usize)>,
    generation: u64,
}

impl Places {
    fn new(set: &SegmentSet) -> Places {
        let mut by_hash: Vec<(u64, usize)> = set
            .segments()
            .iter()
            .enumerate()
            .map(|(i, s)| (xxh3_64(s.id.as_bytes()), i))
            .collect();
        by_hash.sort_unstable();
        Places {
            by_hash,
            generation: next_generation(),
        }
    }

    /// The hint a membership of the segment at `place` carries.
    fn hint(&self, place: usize) -> PlaceHint {
        PlaceHint {
            generation: self.generation,
            place,
        }
    }

    /// The place of `m`'s segment in `set`, the set these places were made from: from its hint
    /// if these places left it, else from its id (and the hint is left).
    fn of(&self, set: &SegmentSet, m: &mut Membership) -> Option<usize> {
        if m.place.generation == self.generation {
            debug_assert_eq!(Some(m.place.place), self.get(set, &m.segment));
            return Some(m.place.place);
        }
        let found = self.get(set, &m.segment);
        if let Some(place) = found {
            m.place = self.hint(place);
        }
        found
    }

    /// The place of segment `id` in `set`, the set these places were made from.
    fn get(&self, set: &SegmentSet, id: &str) -> Option<usize> {
        self.find(set, xxh3_64(id.as_bytes()), id)
    }

    /// As [`Places::get`], `h` the hash of `id` (every place with that hash is compared).
    fn find(&self, set: &SegmentSet, h: u64, id: &str) -> Option<usize> {
        let from = self.by_hash.partition_point(|(k, _)| *k < h);
        self.by_hash[from..]
            .iter()
            .take_while(|(k, _)| *k == h)
            .map(|(_, i)| *i)
            .find(|&i| set.segments()[i].id == id)
    }
}

/// What an event changed, for [`Core::evaluate`]: only the segments whose rules read some of it
/// are evaluated.
#[derive(Debug, Clone, Copy)]
struct Changed {
    /// [`crate::segments::inputs::of_event`].
    inputs: u64,
    /// The profile saw nothing before: the results of an empty profile stand for its stored ones.
    fresh: bool,
}

impl Changed {
    /// The results the segments this event leaves alone keep: the stored ones, or for a fresh
    /// profile an empty profile's.
    fn kept<'a>(&self, set: &'a SegmentSet, stored: &'a [bool]) -> &'a [bool] {
        match set.empty_results() {
            Some(empty) if self.fresh => empty,
            _ => stored,
        }
    }
}

/// A profile's events between two that evaluate every segment (the others evaluate only the
/// segments whose rules read what they changed).
pub const FULL_EVALUATION_EVERY: u64 = 64;

/// Default most identities per profile.
pub const MAX_IDENTITIES: usize = 32;
/// The largest `identity.max_identities` accepted: each identity is up to 512 bytes, and a
/// profile travels whole through the repartition topic when it is merged, so it must stay below
/// the broker's record size (`core/tests/bounds.rs` builds the largest one).
pub const MAX_IDENTITIES_LIMIT: usize = 100;

impl Core {
    pub fn new(segments: Arc<SegmentSet>) -> Core {
        let results = Vec::with_capacity(segments.len());
        let nexts = Vec::with_capacity(segments.len());
        Core {
            places: Places::new(&segments),
            segments,
            results,
            before_results: Vec::new(),
            before_done: Vec::new(),
            before: None,
            undo: Undo::default(),
            #[cfg(debug_assertions)]
            check: None,
            explain: true,
            nexts,
            max_identities: MAX_IDENTITIES,
            stored: Vec::new(),
            incremental: true,
            skipped: 0,
            #[cfg(debug_assertions)]
            check_results: Vec::new(),
        }
    }

    /// Segment evaluations left out so far because the event changed nothing their rules read.
    pub fn segments_skipped(&self) -> u64 {
        self.skipped
    }

    /// Whether an event evaluates only the segments whose rules read something it changed (on
    /// by default; off after [`Core::set_segments`]). The others keep their stored membership.
    /// That holds when every profile was evaluated under the definitions in force (the worker
    /// turns it on for a partition once its re-evaluation sweep is done) and a profile is never
    /// evaluated at a time before an earlier evaluation of it (the worker's stream clock only
    /// moves forward, and timers fire up to it).
    pub fn set_incremental(&mut self, on: bool) {
        self.incremental = on;
    }

    pub fn with_max_identities(mut self, n: usize) -> Core {
        self.max_identities = n;
        self
    }

    /// Whether audience changes carry an explanation (on by default).
    pub fn with_explanations(mut self, on: bool) -> Core {
        self.explain = on;
        self
    }

    pub fn max_identities(&self) -> usize {
        self.max_identities
    }

    pub fn segments(&self) -> &SegmentSet {
        &self.segments
    }

    /// The definitions in force, shared (for the HTTP API's explanations).
    pub fn segment_set(&self) -> Arc<SegmentSet> {
        self.segments.clone()
    }

    /// Swaps in new segment definitions (between batches; profiles catch up through
    /// [`Core::reevaluate`] or their next event, which evaluates every segment until
    /// [`Core::set_incremental`] says they all caught up).
    pub fn set_segments(&mut self, segments: Arc<SegmentSet>) {
        self.places = Places::new(&segments);
        self.segments = segments;
        self.incremental = false;
    }

    /// Takes another profile of the same shopper (`from`, already removed from its own key) into
    /// `profile` and evaluates at `now`: the survivor's ENTERs and EXITs, each once.
    pub fn merge(
        &mut self,
        key: &str,
        profile: &mut Profile,
        from: &str,
        other: Profile,
        now: i64,
        out: &mut Outputs,
    ) {
        self.advance(key, profile, now, out);
        let before = if self.explain {
            Before::Profile(Box::new(profile.clone()))
        } else {
            Before::Nothing
        };
        profile.merge(other, self.max_identities);
        self.evaluate(key, profile, now, Why::Merge(from), before, None, out);
    }

    /// Evaluates a profile under changed definitions at `now` (its due timers fire first).
    /// Segments whose result did not change emit nothing; memberships of removed segments exit.
    pub fn reevaluate(
        &mut self,
        key: &str,
        profile: &mut Profile,
        now: i64,
        version: u64,
        out: &mut Outputs,
    ) {
        let now = now.max(profile.last_seen.unwrap_or(i64::MIN));
        self.advance(key, profile, now, out);
        self.evaluate(
            key,
            profile,
            now,
            Why::Definitions(version),
            Before::Nothing,
            None,
            out,
        );
    }

    /// Every membership of the profile EXITs at `at`, caused by `kind` (`merge` or `deletion`)
    /// of `cause_id`: the profile is about to go (absorbed by another, or deleted).
    pub fn exit_all(
        &mut self,
        key: &str,
        profile: &mut Profile,
        at: i64,
        kind: &str,
        cause_id: &str,
        out: &mut Outputs,
    ) {
        let cause = Cause {
            kind: kind.into(),
            ..Cause::default()
        };
        let cause_id = format!("{kind}:{cause_id}");
        for m in std::mem::take(&mut profile.segments) {
            out.changes.push(AudienceChange {
                id: output_id(&[key, &m.segment, Direction::Exited.as_str(), &cause_id]),
                profile_key: key.to_owned(),
                identity: profile.identity(),
                store: profile.store(),
                segment_id: m.segment,
                direction: Direction::Exited,
                event_time: at,
                cause: cause.clone(),
                explanation: None,
            });
        }
        profile.next_timer = None;
        profile.known_nexts = Default::default();
    }

    /// Applies `ev` to `profile` (stored under `key`) at stream time `clock` (the partition's
    /// clock) and appends the outputs to `out`.
    ///
    /// The profile's timers due by then fire first, with the state before the event: a shopper
    /// whose cart was abandoned at 10:00 and who checks out at 11:30 entered "cart abandoners"
    /// at 11:00, whatever the batch boundaries. The event is then evaluated at
    /// `max(clock, event time, latest time the profile saw)`.
    pub fn process(
        &mut self,
        key: &str,
        profile: &mut Profile,
        ev: &Event,
        source: Source,
        clock: i64,
        out: &mut Outputs,
    ) {
        let now = clock
            .max(ev.time)
            .max(profile.last_seen.unwrap_or(i64::MIN));
        self.advance(key, profile, now, out);
        // What the event may change of what rules read: only the segments that read some of it
        // are evaluated. Before a shopper's first event, the results of a profile that saw
        // nothing stand for the stored ones (when they do not depend on the time), and its next
        // changes are none.
        let fresh = profile.events_total == 0
            && profile.segments.is_empty()
            && profile.next_timer.is_none()
            && profile.identities.customer_id.is_none()
            && profile.identities.emails.is_empty();
        // A profile that saw no event but is not empty (identities merged in before any
        // evaluation) has neither: everything is evaluated.
        // And every [`FULL_EVALUATION_EVERY`]th event of a profile evaluates everything: a
        // backstop, should a rule's next change ever be computed late, as a full evaluation at
        // every event was (timers of a profile kept in memory evaluate only the segments due;
        // one read from the store evaluates everything at its first timer).
        let known = if fresh {
            self.segments.empty_results().is_some()
        } else {
            profile.events_total > 0 && profile.events_total % FULL_EVALUATION_EVERY != 0
        };
        let changed = (self.incremental && known).then(|| Changed {
            inputs: crate::segments::inputs::of_event(ev),
            fresh,
        });
        // What the explanation of a change compares with: the values the event changes of
        // what rules read, recorded before it (the links below included).
        let before = if self.explain {
            self.undo.record(profile, ev, self.segments.reads());
            #[cfg(debug_assertions)]
            {
                let mut copy = self.check.take().unwrap_or_default();
                copy.copy_rule_inputs(profile, self.segments.reads());
                self.check = Some(copy);
            }
            Before::Undone
        } else {
            Before::Nothing
        };
        let i = &ev.identity;
        for (kind, value) in [
            (KeyKind::Customer, &i.customer_id),
            (KeyKind::Email, &i.email),
            (KeyKind::Ecid, &i.ecid),
        ] {
            let Some(value) = value else { continue };
            if identity::holds_value(profile, kind, value) {
                continue; // the usual case: nothing to link
            }
            if value == key {
                let _ = identity::link_new(profile, kind, value, usize::MAX);
                continue;
            }
            match identity::link_new(profile, kind, value, self.max_identities) {
                Ok(()) => out.claims.push(Id {
                    kind,
                    value: value.clone(),
                }),
                Err(why) => out.refused.push(why),
            }
        }
        profile.apply(ev);
        self.evaluate(
            key,
            profile,
            now,
            Why::Event(ev, source),
            before,
            changed,
            out,
        );
    }

    /// Fires the profile's timers due at or before `until`, each at its own due time, in order.
    /// The same profile and `until` always give the same outputs, whenever this runs.
    pub fn advance(&mut self, key: &str, profile: &mut Profile, until: i64, out: &mut Outputs) {
        while let Some(due) = profile.next_timer.filter(|&t| t <= until) {
            out.timers_fired += 1;
            // Nothing but time moved since the last evaluation (timers are never late to their
            // own due time), so the moment before is the state before.
            let before = if self.explain {
                Before::Earlier(due - 1)
            } else {
                Before::Nothing
            };
            self.evaluate(key, profile, due, Why::Timer(due), before, None, out);
        }
    }

    /// Evaluates the profile at `now` after `why`: every segment, or with `changed` only those
    /// whose rules read something in it ([`SegmentSet::evaluate_with_next`]), the others taking
    /// their next changes from the profile's `known_nexts`, which it leaves up to date; a timer
    /// with every next change known, only the segments due and those that use them
    /// ([`SegmentSet::evaluate_due`]).
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &mut self,
        key: &str,
        profile: &mut Profile,
        now: i64,
        why: Why,
        before: Before,
        changed: Option<Changed>,
        out: &mut Outputs,
    ) {
        let first_change = out.changes.len();
        let at = match &why {
            Why::Event(ev, _) => ev.time,
            Why::Timer(due) => *due,
            Why::Merge(_) | Why::Definitions(_) => now,
        };
        // Made at the first change (most evaluations change nothing).
        let mut cause_id: Option<String> = None;
        // The stored memberships by place in the set: one lookup per membership (a shopper is
        // in a few segments) rather than one per segment.
        self.stored.clear();
        self.stored.resize(self.segments.len(), false);
        for m in &mut profile.segments {
            if let Some(i) = self.places.of(&self.segments, m) {
                self.stored[i] = true;
            }
        }
        // Its timers fired before the event: the next was after `now`.
        let earlier = profile.next_timer;
        // The results, and the next timer in the same pass. Nothing after this changes what
        // the rules read (memberships, recent changes and journey bookkeeping are not inputs).
        let keep = changed.map(|c| (c.inputs, c.kept(&self.segments, &self.stored), earlier));
        // Each segment's next change as the last evaluation left it (for a profile that saw
        // nothing, an empty profile's), and as this one leaves it.
        let mut known = std::mem::take(&mut profile.known_nexts);
        if let Some(empty) = changed
            .filter(|c| c.fresh)
            .and_then(|_| self.segments.empty_nexts())
        {
            known = empty;
        }
        // A timer evaluates only the segments due and those that use them, when the profile's
        // next changes are all known (a profile kept in memory); everything otherwise.
        let due = match (&why, keep) {
            (Why::Timer(_), None) if self.incremental => self.segments.evaluate_due(
                profile,
                now,
                &self.stored,
                &mut self.results,
                &mut self.nexts,
                &mut known,
            ),
            _ => None,
        };
        let (skipped, next_timer) = match due {
            Some(r) => r,
            None => self.segments.evaluate_with_next(
                profile,
                now,
                keep,
                &mut self.results,
                &mut self.nexts,
                Some(&mut known),
            ),
        };
        profile.known_nexts = known;
        self.skipped += skipped;
        #[cfg(debug_assertions)]
        {
            let (_, full) = self.segments.evaluate_with_next(
                profile,
                now,
                None,
                &mut self.check_results,
                &mut Vec::new(),
                None,
            );
            assert_eq!(
                self.results, self.check_results,
                "evaluating only the segments an event changed gives every result"
            );
            // Never later than the next change of any segment (it can be earlier: a rule
            // evaluated now that uses a segment left alone reads that one's bound, and a rule's
            // next change can itself be an estimate; such a timer finds nothing to change).
            assert!(
                full.is_none_or(|f| next_timer.is_some_and(|n| n <= f)),
                "an incremental next timer {next_timer:?} after the next change {full:?}"
            );
        }
        let mut before_ready = false;
        let mut undone = false;
        for (index, (seg, &member)) in self
            .segments
            .segments()
            .iter()
            .zip(&self.results)
            .enumerate()
        {
            if member == self.stored[index] {
                continue;
            }
            let pos = profile
                .segments
                .binary_search_by(|m| m.segment.as_str().cmp(&seg.id));
            let explanation = {
                if matches!(before, Before::Undone) && !undone {
                    let reads = self.segments.reads();
                    let copy = self.before.get_or_insert_with(Box::default);
                    copy.copy_rule_inputs(profile, reads);
                    self.undo.revert(copy, reads);
                    undone = true;
                    #[cfg(debug_assertions)]
                    self.check_undone(now);
                }
                let (bp, bnow) = match &before {
                    Before::Nothing => (None, now),
                    Before::Profile(p) => (Some(&**p), now),
                    Before::Undone => (self.before.as_deref(), now),
                    Before::Earlier(t) => (Some(&*profile), *t),
                };
                bp.and_then(|bp| {
                    if !before_ready {
                        let n = self.segments.len();
                        self.before_results.clear();
                        self.before_results.resize(n, false);
                        self.before_done.clear();
                        self.before_done.resize(n, false);
                        before_ready = true;
                    }
                    // Only the flipped segment's rule and those it uses are evaluated before
                    // the cause. Before the event, a rule that reads nothing it changed had the
                    // result it has after it (the one kept above).
                    let keep = match (changed, &before) {
                        (Some(c), Before::Undone) => {
                            Some((c.inputs, c.kept(&self.segments, &self.stored)))
                        }
                        _ => None,
                    };
                    self.segments.evaluate_one(
                        index,
                        bp,
                        bnow,
                        keep,
                        &mut self.before_results,
                        &mut self.before_done,
                    );
                    #[cfg(debug_assertions)]
                    {
                        let mut all = Vec::new();
                        self.segments.evaluate(bp, bnow, &mut all);
                        for (i, done) in self.before_done.iter().enumerate() {
                            assert!(
                                !done || self.before_results[i] == all[i],
                                "evaluating a few segments gives their results before the cause"
                            );
                        }
                    }
                    // The cause flipped the rule only if it held the stored membership just
                    // before. Otherwise the membership was stale (definitions changed and this
                    // profile's re-evaluation has not come yet): nothing in the rule flipped now.
                    if self.before_results[index] == member {
                        return None;
                    }
                    self.segments.flip(
                        index,
                        &Ctx {
                            profile: bp,
                            now: bnow,
                            segments: &self.before_results,
                        },
                        &Ctx {
                            profile,
                            now,
                            segments: &self.results,
                        },
                        !member,
                        member,
                    )
                })
            };
            let direction = match (member, pos) {
                (true, Err(i)) => {
                    crate::profile::room_for_one(&mut profile.segments);
                    profile.segments.insert(
                        i,
                        Membership {
                            segment: seg.id.as_str().into(),
                            since: at,
                            place: self.places.hint(index),
                        },
                    );
                    Direction::Entered
                }
                (false, Ok(i)) => {
                    profile.segments.remove(i);
                    Direction::Exited
                }
                _ => continue,
            };
            let cause_id = cause_id.get_or_insert_with(|| why.cause_id());
            out.changes.push(AudienceChange {
                id: output_id(&[key, &seg.id, direction.as_str(), cause_id]),
                profile_key: key.to_owned(),
                identity: profile.identity(),
                store: profile.store(),
                segment_id: seg.id.as_str().into(),
                direction,
                event_time: at,
                cause: why.cause(),
                explanation,
            });
        }
        // Memberships of segments no longer defined exit. Every defined segment's membership
        // now matches its result, so there are such memberships only if there are more
        // memberships than true results (no lookup in the usual case).
        let members = self.results.iter().filter(|r| **r).count();
        if profile.segments.len() > members {
            let defined = |id: &str| self.places.get(&self.segments, id).is_some();
            let (kept, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut profile.segments)
                .into_iter()
                .partition(|m| defined(&m.segment));
            profile.segments = kept;
            let cause_id = cause_id.get_or_insert_with(|| why.cause_id());
            for m in gone {
                out.changes.push(AudienceChange {
                    id: output_id(&[key, &m.segment, Direction::Exited.as_str(), cause_id]),
                    profile_key: key.to_owned(),
                    identity: profile.identity(),
                    store: profile.store(),
                    segment_id: m.segment,
                    direction: Direction::Exited,
                    event_time: at,
                    cause: Cause {
                        kind: "definition-change".into(),
                        ..Cause::default()
                    },
                    explanation: None,
                });
            }
        }
        for c in &out.changes[first_change..] {
            if profile.recent_changes.len() >= RECENT_CHANGES {
                profile.recent_changes.remove(0);
            }
            crate::profile::room_for_one(&mut profile.recent_changes);
            profile.recent_changes.push(RecentChange {
                segment: c.segment_id.clone(),
                entered: c.direction == Direction::Entered,
                at: c.event_time,
                cause: c.cause.kind.clone(),
            });
        }
        if let Before::Profile(p) = before {
            self.before = Some(p); // its allocations serve the next event
        }
        self.journeys(key, profile, now, at, &why, first_change, out);
        profile.next_timer = next_timer;
    }

    /// Debug builds: the profile before the event made from the undo evaluates like the copy
    /// made before it.
    #[cfg(debug_assertions)]
    fn check_undone(&self, now: i64) {
        let (Some(made), Some(undone)) = (&self.check, &self.before) else {
            return;
        };
        let (mut want, mut got) = (Vec::new(), Vec::new());
        self.segments.evaluate(made, now, &mut want);
        self.segments.evaluate(undone, now, &mut got);
        assert_eq!(
            got, want,
            "the profile before the event, undone, reads like its copy"
        );
    }

    /// Triggers the journeys this evaluation matched (its changes start at `first_change`).
    #[allow(clippy::too_many_arguments)]
    fn journeys(
        &mut self,
        key: &str,
        profile: &mut Profile,
        now: i64,
        at: i64,
        why: &Why,
        first_change: usize,
        out: &mut Outputs,
    ) {
        let (ev, source) = match why {
            Why::Event(ev, source) => (Some(*ev), Some(*source)),
            _ => (None, None),
        };
        for journey in self.segments.journeys() {
            let change = |seg: usize, dir: Direction| {
                let id = &self.segments.segments()[seg].id;
                out.changes[first_change..]
                    .iter()
                    .find(|c| c.direction == dir && c.segment_id == *id)
            };
            let (cause_key, segment) = match &journey.trigger {
                Trigger::Event(kinds) => match ev.filter(|e| kinds.contains(&e.kind)) {
                    Some(e) => (journey::event_cause(e, source.as_ref()), None),
                    None => continue,
                },
                Trigger::Enter(seg) | Trigger::Exit(seg) => {
                    let dir = if matches!(journey.trigger, Trigger::Enter(_)) {
                        Direction::Entered
                    } else {
                        Direction::Exited
                    };
                    match change(*seg, dir) {
                        Some(c) => (format!("change:{}", c.id), Some(c.segment_id.clone())),
                        None => continue,
                    }
                }
            };
            if !self
                .segments
                .journey_condition(journey, profile, now, &self.results)
            {
                continue;
            }
            if let Err(why) = journey.admit(profile, &cause_key, at) {
                out.suppressed.push((journey.id.clone(), why));
                continue;
            }
            let mut cause = why.cause();
            cause.segment_id = segment;
            out.triggers.push(JourneyTrigger {
                id: output_id(&[key, &journey.id, &cause_key]),
                journey_id: journey.id.clone(),
                profile_key: key.to_owned(),
                identity: profile.identity(),
                store: profile.store(),
                triggered_at: at,
                cause,
                contact: journey::contact(profile),
                context: journey::context(profile, ev),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Attributes, EventType, Line};
    use crate::wire::Identity;

    #[test]
    fn output_ids_are_32_lowercase_hex_digits_as_format_writes_them() {
        for v in [
            0u128,
            1,
            0xabc,
            u128::MAX,
            1 << 127,
            0x0123_4567_89ab_cdef_fedc_ba98_7654_3210,
        ] {
            assert_eq!(super::hex32(v), format!("{v:032x}"));
        }
        let id = super::output_id(&["a", "b"]);
        assert_eq!(
            id,
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b"a\x1fb\x1f"))
        );
    }

    #[test]
    fn cause_ids_and_long_output_ids_are_what_format_and_one_buffer_give() {
        let source = Source {
            topic: "commerce.storefront",
            partition: -1,
            offset: i64::MAX,
        };
        assert_eq!(
            source.cause_id("e-1"),
            format!("e-1@commerce.storefront/-1/{}", i64::MAX)
        );
        for due in [0, -1, 1_700_000_000_123, i64::MIN, i64::MAX] {
            assert_eq!(Why::Timer(due).cause_id(), format!("timer@{due}"));
        }
        assert_eq!(Why::Merge("k:1").cause_id(), "merge:k:1");
        // Longer than the stack buffer: the same hash as the parts joined in one buffer.
        let long = "k".repeat(300);
        let mut joined = Vec::new();
        for p in [long.as_str(), "seg", "ENTERED"] {
            joined.extend_from_slice(p.as_bytes());
            joined.push(0x1f);
        }
        assert_eq!(
            super::output_id(&[&long, "seg", "ENTERED"]),
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&joined))
        );
        // Exactly the stack buffer's length (255 bytes and a separator), and no parts at all.
        let fits = "f".repeat(255);
        assert_eq!(
            super::output_id(&[&fits]),
            format!(
                "{:032x}",
                xxhash_rust::xxh3::xxh3_128(format!("{fits}\x1f").as_bytes())
            )
        );
        assert_eq!(
            super::output_id(&[]),
            format!("{:032x}", xxhash_rust::xxh3::xxh3_128(b""))
        );
    }

    const RULES: &str = r#"
segments:
  - id: cart-holders
    rule: cart.items > 0
  - id: big-cart
    rule: in_segment("cart-holders") and cart.value >= 100
"#;

    const TIMED: &str = r#"
segments:
  - id: cart-abandoners
    rule: then_no(addToCart, completeCheckout, 1h) and cart.items > 0
  - id: browsing
    rule: count(productPageView, 1h) >= 2
  - id: fresh
    rule: since(last productPageView) < 30m
journeys:
  - id: abandoned-cart
    on_enter: cart-abandoners
    reentry_wait: 1d
    consent: email
  - id: post-purchase
    on_event: [orderPlaced, completeCheckout]
"#;

    #[test]
    fn a_membership_finds_its_segments_place_by_id() {
        let set = SegmentSet::parse(TIMED).unwrap();
        let places = Places::new(&set);
        for (i, s) in set.segments().iter().enumerate() {
            assert_eq!(places.get(&set, &s.id), Some(i), "{}", s.id);
        }
        for missing in ["", "fres", "fresh ", "Fresh", "no-such-segment"] {
            assert_eq!(places.get(&set, missing), None, "{missing:?}");
        }
        // Two ids under one hash (no real collision is known): the id decides.
        let shared = Places {
            by_hash: vec![(1, 0), (7, 2), (7, 1), (9, 0)],
            generation: 0,
        };
        let id = |i: usize| set.segments()[i].id.as_str();
        assert_eq!(shared.find(&set, 7, id(1)), Some(1));
        assert_eq!(shared.find(&set, 7, id(2)), Some(2));
        assert_eq!(shared.find(&set, 7, id(0)), None);
        assert_eq!(shared.find(&set, 8, id(1)), None);
    }

    const T: i64 = 1_760_000_000_000;
    const MIN: i64 = 60_000;
    const HOUR: i64 = 60 * MIN;

    fn ev(kind: EventType, id: &str, time: i64) -> Event {
        Event {
            id: id.into(),
            kind,
            time,
            identity: Identity {
                ecid: Some("e1".into()),
                ..Default::default()
            },
            value: 0.0,
            device: None,
            channel: None,
            lines: Vec::new(),
            cart: None,
            order_id: None,
            search_phrase: None,
            search_results: None,
            attributes: None,
            store_code: None,
            store_view_code: None,
            currency: None,
        }
    }

    fn add(id: &str, time: i64, qty: f64) -> Event {
        let mut e = ev(EventType::AddToCart, id, time);
        e.value = qty * 60.0;
        e.lines = vec![Line {
            sku: "S".into(),
            name: Some("Shoe".into()),
            quantity: qty,
            price: Some(60.0),
            ..Default::default()
        }];
        e
    }

    fn checkout(id: &str, time: i64, order: &str) -> Event {
        let mut e = ev(EventType::CompleteCheckout, id, time);
        e.order_id = Some(order.into());
        e.value = 60.0;
        e
    }

    fn consent(time: i64, yes: bool) -> Event {
        let mut e = ev(EventType::AccountUpdated, "consent", time);
        e.attributes = Some(Box::new(Attributes {
            email: Some("a@example.com".into()),
            consent_email: Some(yes),
            ..Default::default()
        }));
        e
    }

    fn src() -> Source<'static> {
        Source {
            topic: "commerce.storefront",
            partition: 0,
            offset: 7,
        }
    }

    fn core(rules: &str) -> Core {
        Core::new(Arc::new(SegmentSet::parse(rules).unwrap()))
    }

    /// Processes events in order with the clock at each event's time, as a replay would.
    fn run(core: &mut Core, p: &mut Profile, events: &[Event]) -> Outputs {
        let mut out = Outputs::default();
        for e in events {
            core.process("k1", p, e, src(), e.time, &mut out);
        }
        out
    }

    fn changes(out: &Outputs) -> Vec<(&str, Direction, i64)> {
        out.changes
            .iter()
            .map(|c| (c.segment_id.as_str(), c.direction, c.event_time))
            .collect()
    }

    /// A shopper's memberships and recent changes hold no spare entries while short (the
    /// lists grow one entry at a time up to four: `profile::room_for_one`).
    #[test]
    fn memberships_and_recent_changes_of_a_new_shopper_hold_no_spare_entries() {
        let mut core = core(
            "segments:\n  - id: fresh\n    rule: since(last productPageView) < 30m\n  - id: browsing\n    rule: count(productPageView, 1h) >= 2\n",
        );
        let mut p = Profile::default();
        let spare = |p: &Profile| {
            (
                p.segments.capacity() - p.segments.len(),
                p.recent_changes.capacity() - p.recent_changes.len(),
            )
        };
        let out = run(
            &mut core,
            &mut p,
            &[ev(EventType::ProductPageView, "v1", T)],
        );
        assert_eq!(changes(&out), vec![("fresh", Direction::Entered, T)]);
        assert_eq!(
            (p.segments.len(), p.recent_changes.len(), spare(&p)),
            (1, 1, (0, 0))
        );
        assert_eq!(
            (p.identities.ecids.len(), p.identities.ecids.capacity()),
            (1, 1),
            "the event's ecid linked"
        );
        let out = run(
            &mut core,
            &mut p,
            &[ev(EventType::ProductPageView, "v2", T + MIN)],
        );
        assert_eq!(
            changes(&out),
            vec![("browsing", Direction::Entered, T + MIN)]
        );
        assert_eq!(
            (p.segments.len(), p.recent_changes.len(), spare(&p)),
            (2, 2, (0, 0))
        );
    }

    #[test]
    fn a_membership_finds_its_segment_under_other_definitions_too() {
        // `fresh` is third here and first there: a profile evaluated by one core, then by the
        // other, then by the first again, keeps its membership (a stale place would read
        // another segment's result as stored, and emit an ENTERED for a member).
        let mut a = core(TIMED);
        let mut b = core(
            "segments:\n  - id: fresh\n    rule: since(last productPageView) < 30m\n  - id: browsing\n    rule: count(productPageView, 1h) >= 2\n",
        );
        let view = |id: &str, t: i64| ev(EventType::ProductPageView, id, t);
        let mut p = Profile::default();
        let out = run(&mut a, &mut p, &[view("v1", T)]);
        assert_eq!(changes(&out), vec![("fresh", Direction::Entered, T)]);
        let out = run(&mut b, &mut p, &[view("v2", T + MIN)]);
        assert_eq!(
            changes(&out),
            vec![("browsing", Direction::Entered, T + MIN)]
        );
        let out = run(&mut a, &mut p, &[view("v3", T + 2 * MIN)]);
        assert_eq!(changes(&out), vec![], "a member of both already");
        let mut out = Outputs::default();
        a.advance("k1", &mut p, T + 2 * MIN + 30 * MIN, &mut out);
        assert_eq!(
            changes(&out),
            vec![("fresh", Direction::Exited, T + 2 * MIN + 30 * MIN)]
        );
        // New definitions on the same core: `browsing` moves from second to first place.
        a.set_segments(Arc::new(
            SegmentSet::parse("segments:\n  - id: browsing\n    rule: count(productPageView, 1h) >= 2\n  - id: fresh\n    rule: since(last productPageView) < 30m\n").unwrap(),
        ));
        let out = run(&mut a, &mut p, &[view("v4", T + 40 * MIN)]);
        assert_eq!(
            changes(&out),
            vec![("fresh", Direction::Entered, T + 40 * MIN)],
            "still in browsing"
        );
    }

    /// An event's identities the profile does not hold are linked and claimed while the
    /// profile has room; past `max_identities`, or a second customer id, they are refused (and
    /// counted by the worker), the profile unchanged; the profile's own key links at any count.
    #[test]
    fn links_past_the_limit_or_in_conflict_are_refused_and_the_own_key_still_links() {
        let mut core = core(RULES).with_max_identities(3);
        let mut p = Profile::default();
        let with = |id: &str, time: i64, ecid: &str, customer: Option<&str>| {
            let mut e = add(id, time, 1.0);
            e.identity.ecid = Some(ecid.into());
            e.identity.customer_id = customer.map(Into::into);
            e
        };
        let claimed = |out: &Outputs| -> Vec<(KeyKind, String)> {
            out.claims
                .iter()
                .map(|c| (c.kind, c.value.clone()))
                .collect()
        };
        let out = run(&mut core, &mut p, &[with("a", 1_000, "e1", Some("c1"))]);
        assert_eq!(
            claimed(&out),
            [
                (KeyKind::Customer, "c1".into()),
                (KeyKind::Ecid, "e1".into())
            ]
        );
        assert!(out.refused.is_empty());
        let out = run(&mut core, &mut p, &[with("b", 2_000, "e2", Some("c2"))]);
        assert_eq!(claimed(&out), [(KeyKind::Ecid, "e2".into())]);
        assert_eq!(out.refused, [Refused::Conflict], "a second customer id");
        assert_eq!(p.identities.customer_id.as_deref(), Some("c1"));
        let out = run(&mut core, &mut p, &[with("c", 3_000, "e3", None)]);
        assert!(out.claims.is_empty());
        assert_eq!(out.refused, [Refused::Limit], "three held: c1, e1, e2");
        assert!(!identity::holds_value(&p, KeyKind::Ecid, "e3"));
        assert_eq!(identity::count(&p), 3);
        // A second customer id at the limit: a conflict (it could never be linked).
        let out = run(&mut core, &mut p, &[with("c2", 3_500, "e1", Some("c3"))]);
        assert_eq!(out.refused, [Refused::Conflict]);
        // Held ones are neither claimed nor refused again.
        let out = run(&mut core, &mut p, &[with("d", 4_000, "e2", Some("c1"))]);
        assert!(out.claims.is_empty() && out.refused.is_empty());
        // The event's ECID is the profile's own key ("k1"): linked past the limit, not claimed.
        let out = run(&mut core, &mut p, &[with("e", 5_000, "k1", None)]);
        assert!(out.claims.is_empty() && out.refused.is_empty());
        assert!(identity::holds_value(&p, KeyKind::Ecid, "k1"));
        assert_eq!(identity::count(&p), 4);
    }

    #[test]
    fn new_definitions_change_only_what_they_change_and_links_are_claimed() {
        let mut core = core(RULES);
        let mut p = Profile::default();
        let mut first = add("a", 1_000, 2.0);
        first.identity.email = Some("ann@x.com".into());
        let out = run(&mut core, &mut p, &[first]);
        assert_eq!(changes(&out).len(), 2, "cart-holders and big-cart");
        // The event's e-mail is linked to the profile, and must be claimed; the ECID too.
        let claimed: Vec<&str> = out.claims.iter().map(|c| c.value.as_str()).collect();
        assert_eq!(claimed, vec!["ann@x.com", "e1"]);
        assert!(run(&mut core, &mut p, &[add("b", 1_500, 1.0)])
            .claims
            .is_empty());

        // big-cart removed, cart-holders unchanged, pricey added.
        let v2 = SegmentSet::parse(
            "segments:\n  - id: cart-holders\n    rule: cart.items  >  0\n  - id: pricey\n    rule: cart.value >= 100\n",
        )
        .unwrap();
        let version = v2.fingerprint();
        assert_eq!(
            SegmentSet::parse(RULES).unwrap().diff(&v2),
            (vec!["big-cart".into()], vec![], vec!["pricey".into()]),
            "diff(old) from the other side"
        );
        core.set_segments(Arc::new(v2));
        let mut out = Outputs::default();
        core.reevaluate("k", &mut p, 5_000, version, &mut out);
        let got: Vec<_> = out
            .changes
            .iter()
            .map(|c| (c.segment_id.as_str(), c.direction, c.cause.kind.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("pricey", Direction::Entered, "definition-change"),
                ("big-cart", Direction::Exited, "definition-change")
            ]
        );
        let mut again = Outputs::default();
        core.reevaluate("k", &mut p, 6_000, version, &mut again);
        assert!(
            again.changes.is_empty(),
            "re-evaluating twice emits nothing"
        );
    }

    #[test]
    fn enters_once_then_exits_with_stable_ids() {
        let mut core = core(RULES);
        let mut p = Profile::default();
        let out = run(&mut core, &mut p, &[add("a", 1_000, 1.0)]);
        assert_eq!(
            changes(&out),
            vec![("cart-holders", Direction::Entered, 1_000)]
        );
        let out = run(&mut core, &mut p, &[add("b", 2_000, 1.0)]);
        assert_eq!(changes(&out), vec![("big-cart", Direction::Entered, 2_000)]);
        let out = run(&mut core, &mut p, &[checkout("c", 3_000, "o1")]);
        assert_eq!(
            changes(&out),
            vec![
                ("cart-holders", Direction::Exited, 3_000),
                ("big-cart", Direction::Exited, 3_000)
            ]
        );
        assert_eq!(
            out.changes[0].cause.event_type.as_deref(),
            Some("completeCheckout")
        );
        assert_eq!(p.next_timer, None, "no rule here depends on time");

        // Same input, fresh state: the same ids.
        let events = [
            add("a", 1_000, 1.0),
            add("b", 2_000, 1.0),
            checkout("c", 3_000, "o1"),
        ];
        let ids = |o: &Outputs| o.changes.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        let first = run(&mut core, &mut Profile::default(), &events);
        let second = run(&mut core, &mut Profile::default(), &events);
        assert_eq!(ids(&first), ids(&second));
        assert_eq!(first.changes[0].id.len(), 32);
        assert_ne!(first.changes[0].id, first.changes[2].id);
    }

    /// Regression: a producer that reused one event id for addToCart, removeFromCart, addToCart
    /// got two ENTERs of cart-holders with the same id (a consumer dropping duplicates by id,
    /// as the README says to, lost the second). The input position is part of the id.
    #[test]
    fn a_reused_event_id_still_gives_distinct_output_ids() {
        let mut core = core(RULES);
        let mut p = Profile::default();
        let mut remove = add("x", 2_000, 1.0);
        remove.kind = EventType::RemoveFromCart;
        let events = [add("x", 1_000, 1.0), remove, add("x", 3_000, 1.0)];
        let mut out = Outputs::default();
        for (offset, e) in events.iter().enumerate() {
            let source = Source {
                offset: offset as i64,
                ..src()
            };
            core.process("k1", &mut p, e, source, e.time, &mut out);
        }
        assert_eq!(
            changes(&out),
            vec![
                ("cart-holders", Direction::Entered, 1_000),
                ("cart-holders", Direction::Exited, 2_000),
                ("cart-holders", Direction::Entered, 3_000)
            ]
        );
        let ids: std::collections::HashSet<&str> =
            out.changes.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids.len(), 3, "one id per change: {:?}", out.changes);
    }

    #[test]
    fn an_abandoned_cart_enters_at_exactly_one_hour_and_triggers_its_journey() {
        let mut core = core(TIMED);
        let mut p = Profile::default();
        run(
            &mut core,
            &mut p,
            &[consent(T - MIN, true), add("a", T, 2.0)],
        );
        assert_eq!(
            p.next_timer,
            Some(T + HOUR),
            "scheduled for when the wait ends"
        );

        let mut out = Outputs::default();
        core.advance("k1", &mut p, T + HOUR - 1, &mut out);
        assert!(
            out.changes.is_empty() && out.timers_fired == 0,
            "not a millisecond early"
        );
        core.advance("k1", &mut p, T + 5 * HOUR, &mut out);
        assert_eq!(out.timers_fired, 1);
        assert_eq!(
            changes(&out),
            vec![("cart-abandoners", Direction::Entered, T + HOUR)],
            "entered at the due time, not at the clock's"
        );
        assert_eq!(out.changes[0].cause.kind, "timer");
        let t = &out.triggers[0];
        assert_eq!(
            (t.journey_id.as_str(), t.triggered_at),
            ("abandoned-cart", T + HOUR)
        );
        assert_eq!(t.cause.segment_id.as_deref(), Some("cart-abandoners"));
        assert_eq!(t.contact.email.as_deref(), Some("a@example.com"));
        assert_eq!(t.context.cart_items.len(), 1);
        assert_eq!(t.context.cart_items[0].name.as_deref(), Some("Shoe"));
        assert_eq!(t.context.cart_value, Some(120.0));
        assert_eq!(p.next_timer, None, "nothing left to wait for");

        // Checking out later exits, and starts the post-purchase journey once for the order,
        // even when the back office reports the same order again.
        let mut placed = checkout("bo", T + 3 * HOUR, "o-1");
        placed.kind = EventType::OrderPlaced;
        let out = run(
            &mut core,
            &mut p,
            &[checkout("c", T + 3 * HOUR, "o-1"), placed],
        );
        assert_eq!(
            changes(&out),
            vec![("cart-abandoners", Direction::Exited, T + 3 * HOUR)]
        );
        assert_eq!(out.triggers.len(), 1);
        assert_eq!(out.triggers[0].journey_id, "post-purchase");
        assert_eq!(out.triggers[0].context.order_id.as_deref(), Some("o-1"));
        assert_eq!(
            out.suppressed,
            vec![("post-purchase".to_string(), Suppressed::DuplicateCause)]
        );
    }

    /// (expression, line, column, before, after, operands as "expr: before -> after").
    fn explained(c: &AudienceChange) -> (String, i32, i32, String, String, Vec<String>) {
        let e = c.explanation.as_ref().expect("an explanation");
        (
            e.expression.to_string(),
            e.line,
            e.column,
            e.before.to_string(),
            e.after.to_string(),
            e.operands
                .iter()
                .map(|o| format!("{}: {} -> {}", o.expression, o.before, o.after))
                .collect(),
        )
    }

    fn ex(
        expr: &str,
        line: i32,
        col: i32,
        before: &str,
        after: &str,
        ops: &[&str],
    ) -> (String, i32, i32, String, String, Vec<String>) {
        (
            expr.into(),
            line,
            col,
            before.into(),
            after.into(),
            ops.iter().map(|s| s.to_string()).collect(),
        )
    }

    #[test]
    fn each_change_names_the_condition_that_flipped_where_it_is_written_and_its_values() {
        let mut core = core(TIMED);
        let mut p = Profile::default();
        let out = run(&mut core, &mut p, &[add("a", T, 2.0)]);
        assert!(changes(&out).is_empty(), "{:?}", changes(&out));
        // A timer: the wait ended; the cart condition held all along.
        let mut out = Outputs::default();
        core.advance("k1", &mut p, T + 2 * HOUR, &mut out);
        assert_eq!(
            changes(&out),
            vec![("cart-abandoners", Direction::Entered, T + HOUR)]
        );
        assert_eq!(
            explained(&out.changes[0]),
            ex(
                "then_no(addToCart, completeCheckout, 1h)",
                4,
                11,
                "false",
                "true",
                &[]
            )
        );
        // An event: the checkout emptied the cart (the sequence still holds: it came late).
        let out = run(&mut core, &mut p, &[checkout("c", T + 3 * HOUR, "o-1")]);
        assert_eq!(
            explained(&out.changes[0]),
            ex(
                "cart.items > 0",
                4,
                56,
                "true",
                "false",
                &["cart.items: 1 -> 0"]
            )
        );
        // Counts and durations, entering on events and leaving as time passes (both views share
        // a bucket of the 1 h window, so they leave it together).
        let view = |id: &str, t: i64| ev(EventType::ProductPageView, id, t);
        let out = run(&mut core, &mut p, &[view("v1", T + 4 * HOUR)]);
        assert_eq!(
            changes(&out),
            vec![("fresh", Direction::Entered, T + 4 * HOUR)]
        );
        assert_eq!(
            explained(&out.changes[0]),
            ex(
                "since(last productPageView) < 30m",
                8,
                11,
                "false",
                "true",
                &["since(last productPageView): missing -> 0ms"]
            )
        );
        let out = run(&mut core, &mut p, &[view("v2", T + 4 * HOUR + MIN)]);
        assert_eq!(
            explained(&out.changes[0]),
            ex(
                "count(productPageView, 1h) >= 2",
                6,
                11,
                "false",
                "true",
                &["count(productPageView, 1h): 1 -> 2"]
            )
        );
        let mut out = Outputs::default();
        core.advance("k1", &mut p, T + 6 * HOUR, &mut out);
        let found: Vec<_> = out.changes.iter().map(explained).collect();
        assert_eq!(
            found,
            vec![
                ex(
                    "since(last productPageView) < 30m",
                    8,
                    11,
                    "true",
                    "false",
                    &["since(last productPageView): 29m 59s 999ms -> 30m"]
                ),
                ex(
                    "count(productPageView, 1h) >= 2",
                    6,
                    11,
                    "true",
                    "false",
                    &["count(productPageView, 1h): 2 -> 0"]
                ),
            ]
        );

        // A segment that depends on another names the other's condition.
        let mut core = super::tests::core(RULES);
        let mut p = Profile::default();
        let out = run(&mut core, &mut p, &[add("a", T, 2.0)]);
        assert_eq!(
            explained(&out.changes[1]),
            ex("in_segment(\"cart-holders\")", 6, 11, "false", "true", &[])
        );
    }

    /// Changes that no condition of the rule flipped carry no explanation: a membership left
    /// stale by changed definitions (its profile not yet re-evaluated) changes at the next event,
    /// which did not cause it. An identity link flips `identity.known`.
    #[test]
    fn stale_memberships_have_no_explanation_and_links_flip_identity_known() {
        let mut core = core(RULES);
        let mut p = Profile::default();
        run(&mut core, &mut p, &[add("a", T, 2.0)]);
        core.set_segments(Arc::new(
            SegmentSet::parse(
                "segments:\n  - id: cart-holders\n    rule: cart.items > 5\n  - id: known\n    rule: identity.known\n",
            )
            .unwrap(),
        ));
        let mut view = ev(EventType::PageView, "v", T + MIN);
        view.identity.customer_id = Some("c-1".into());
        let out = run(&mut core, &mut p, &[view]);
        let got: Vec<_> = out
            .changes
            .iter()
            .map(|c| (c.segment_id.as_str(), c.direction, c.explanation.is_some()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("cart-holders", Direction::Exited, false),
                ("known", Direction::Entered, true),
                ("big-cart", Direction::Exited, false),
            ]
        );
        assert_eq!(
            explained(&out.changes[1]),
            ex("identity.known", 5, 11, "false", "true", &[])
        );
    }

    #[test]
    fn a_checkout_at_59_minutes_means_nothing_happens() {
        let mut core = core(TIMED);
        let mut p = Profile::default();
        let mut out = run(
            &mut core,
            &mut p,
            &[
                consent(T - MIN, true),
                add("a", T, 1.0),
                checkout("c", T + 59 * MIN, "o"),
            ],
        );
        core.advance("k1", &mut p, T + 30 * 24 * HOUR, &mut out);
        assert!(
            !out.changes
                .iter()
                .any(|c| c.segment_id == "cart-abandoners"),
            "{:?}",
            changes(&out)
        );
        assert!(!out
            .triggers
            .iter()
            .any(|t| t.journey_id == "abandoned-cart"));
    }

    #[test]
    fn an_event_after_the_due_time_fires_the_timer_first() {
        // The clock never reached T+1h (no other traffic), then the checkout arrives at T+2h:
        // the shopper did abandon the cart for an hour before checking out.
        let mut core = core(TIMED);
        let mut p = Profile::default();
        let out = run(
            &mut core,
            &mut p,
            &[
                consent(T - MIN, true),
                add("a", T, 1.0),
                checkout("c", T + 2 * HOUR, "o"),
            ],
        );
        let abandon: Vec<_> = changes(&out)
            .into_iter()
            .filter(|c| c.0 == "cart-abandoners")
            .collect();
        assert_eq!(
            abandon,
            vec![
                ("cart-abandoners", Direction::Entered, T + HOUR),
                ("cart-abandoners", Direction::Exited, T + 2 * HOUR)
            ]
        );
    }

    #[test]
    fn reentry_wait_and_missing_consent_suppress_the_trigger_not_the_membership() {
        let mut core = core(TIMED);
        let mut p = Profile::default();
        let mut out = run(
            &mut core,
            &mut p,
            &[consent(T - MIN, true), add("a", T, 1.0)],
        );
        core.advance("k1", &mut p, T + HOUR, &mut out);
        let later = [
            checkout("c", T + 2 * HOUR, "o"),
            add("b", T + 3 * HOUR, 1.0),
        ];
        out.changes.extend(run(&mut core, &mut p, &later).changes);
        core.advance("k1", &mut p, T + 4 * HOUR, &mut out);
        let entered = out
            .changes
            .iter()
            .filter(|c| c.segment_id == "cart-abandoners" && c.direction == Direction::Entered)
            .count();
        assert_eq!(entered, 2, "entered twice");
        assert_eq!(
            out.triggers
                .iter()
                .filter(|t| t.journey_id == "abandoned-cart")
                .count(),
            1,
            "the second entry is within the 1d re-entry wait"
        );
        assert!(out
            .suppressed
            .contains(&("abandoned-cart".to_string(), Suppressed::ReentryWait)));

        let mut q = Profile::default();
        let mut out = run(
            &mut core,
            &mut q,
            &[consent(T - MIN, false), add("a", T, 1.0)],
        );
        core.advance("k1", &mut q, T + HOUR, &mut out);
        assert_eq!(
            changes(&out),
            vec![("cart-abandoners", Direction::Entered, T + HOUR)]
        );
        assert!(out.triggers.is_empty());
        assert_eq!(
            out.suppressed,
            vec![("abandoned-cart".to_string(), Suppressed::Consent)]
        );
    }

    #[test]
    fn windows_and_since_exit_when_time_passes_and_the_batching_does_not_matter() {
        let mut core = core(TIMED);
        let views: Vec<Event> = (0..3)
            .map(|i| ev(EventType::ProductPageView, &format!("v{i}"), T + i * MIN))
            .collect();
        // Fired one by one as the clock creeps forward...
        let mut p = Profile::default();
        let mut stepwise = run(&mut core, &mut p, &views);
        let mut clock = T + 2 * MIN;
        while clock < T + 4 * HOUR {
            clock += 7 * MIN;
            core.advance("k1", &mut p, clock, &mut stepwise);
        }
        // ...or all at once after a jump of the clock: the same outputs.
        let mut q = Profile::default();
        let mut jump = run(&mut core, &mut q, &views);
        core.advance("k1", &mut q, T + 4 * HOUR, &mut jump);
        let all = |o: &Outputs| {
            o.changes
                .iter()
                .map(|c| {
                    (
                        c.id.clone(),
                        c.segment_id.clone(),
                        c.direction,
                        c.event_time,
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(all(&stepwise), all(&jump));
        let exits: Vec<_> = changes(&jump)
            .into_iter()
            .filter(|c| c.1 == Direction::Exited)
            .collect();
        assert_eq!(exits.len(), 2, "{exits:?}");
        assert_eq!(
            exits[0],
            ("fresh", Direction::Exited, T + 2 * MIN + 30 * MIN)
        );
        // "browsing" needs 2 views in the last hour: it exits when the second-newest view's
        // 5-minute bucket leaves the window (the window may reach one bucket further back).
        let browsing_exit = exits[1].2;
        assert_eq!(exits[1].0, "browsing");
        let holds = |t: i64| {
            let mut r = Vec::new();
            core.segments().evaluate(&q, t, &mut r);
            r[1]
        };
        assert!(holds(browsing_exit - 1) && !holds(browsing_exit));
        assert_eq!(q.next_timer, None);
    }

    /// The promise timers rest on: until `next_timer`, no membership changes without an event.
    #[test]
    fn no_membership_flips_before_the_scheduled_time() {
        let rules = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../examples/segments.yaml"
        ))
        .unwrap();
        let set = SegmentSet::parse(&rules).unwrap();
        let mut core = Core::new(Arc::new(set.clone()));
        let kinds = [
            EventType::ProductPageView,
            EventType::AddToCart,
            EventType::CompleteCheckout,
            EventType::OrderPlaced,
            EventType::SearchResponseReceived,
            EventType::AccountCreated,
        ];
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut checked, mut with_timer) = (0, 0);
        for shopper in 0..200 {
            let mut p = Profile::default();
            let mut t = T;
            for i in 0..rnd(30) + 1 {
                t += rnd(3 * HOUR as u64) as i64 * (1 + rnd(10) as i64 * 20);
                let kind = kinds[rnd(kinds.len() as u64) as usize];
                let mut e = ev(kind, &format!("{shopper}-{i}"), t);
                e.value = rnd(400) as f64;
                e.order_id = Some(format!("o{shopper}-{i}"));
                e.lines = vec![Line {
                    sku: compact_str::format_compact!("sku{}", rnd(5)),
                    category: Some("electronics.smartphone".into()),
                    quantity: 1.0,
                    price: Some(e.value),
                    ..Default::default()
                }];
                run(&mut core, &mut p, &[e]);
            }
            let now = p.last_seen.unwrap();
            let mut before = Vec::new();
            set.evaluate(&p, now, &mut before);
            with_timer += usize::from(p.next_timer.is_some());
            let horizon = p.next_timer.unwrap_or(now + 200 * 24 * HOUR);
            for k in 1..=50 {
                let at = now + (horizon - 1 - now) * k / 50;
                let mut r = Vec::new();
                set.evaluate(&p, at, &mut r);
                assert_eq!(
                    r, before,
                    "shopper {shopper}: a change at {at} before {horizon}"
                );
                checked += 1;
            }
        }
        assert_eq!(checked, 200 * 50);
        assert!(
            with_timer > 100,
            "most shoppers wait for something: {with_timer}"
        );
    }
}
