//! Segment definitions: a YAML file of rules, parsed, type-checked and compiled once.
//!
//! ```yaml
//! segments:
//!   - id: high-ltv
//!     name: High lifetime value
//!     rule: orders.ltv >= 1000
//! ```
//!
//! Parse and type errors carry the file's line and column. A segment may use `in_segment("id")`;
//! segments are evaluated in dependency order, so it sees this pass's result; cycles are errors.

mod explain;
mod expr;
mod plan;

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event as YamlEvent, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

pub use explain::{Evaluated, Part};
pub use expr::{parse as parse_expr, parse_duration, ExprError};
pub use plan::{inputs, render_duration, Ctx, Node, Value, ATTRIBUTES, FUNCTIONS};

use crate::event::EventType;
use crate::journey::{Consent, Journey, Trigger};
use crate::profile::Profile;

/// A problem in a definitions file, with its position (1-based line and column).
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.col, self.message)
    }
}

/// All the problems found in a file (never just the first).
#[derive(Debug, Clone, PartialEq)]
pub struct DefinitionErrors(pub Vec<DefinitionError>);

impl fmt::Display for DefinitionErrors {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DefinitionErrors {}

/// One compiled segment.
#[derive(Debug, Clone)]
pub struct Segment {
    pub id: String,
    pub name: Option<String>,
    pub description: Option<String>,
    /// The rule as written.
    pub source: String,
    rule: Node,
    /// The passing of time alone can change the result (timers are needed).
    timed: bool,
    /// What the rule reads of a profile ([`plan::inputs`]), the segments it uses included.
    inputs: u64,
    /// The rule's sub-expressions with their places in the file, for explanations.
    explain: Option<Part>,
    /// The segments its rule uses (`in_segment`).
    uses: Vec<String>,
    /// The places of the segments its rule uses, and of those theirs use, ascending (each
    /// before this one in evaluation order).
    deps: Vec<usize>,
}

impl Segment {
    /// The rule as written, each run of whitespace one space (a folded or re-indented rule is
    /// the same rule).
    pub fn rule_text(&self) -> String {
        self.source.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    /// The ids of the segments this one's rule uses (`in_segment`).
    pub fn uses(&self) -> &[String] {
        &self.uses
    }

    /// One segment's result and next change (after `now`), given the results and next changes
    /// of the segments before it.
    #[inline]
    fn evaluate_next(
        &self,
        profile: &Profile,
        now: i64,
        results: &[bool],
        nexts: &[Option<i64>],
    ) -> (bool, Option<i64>) {
        let cx = Ctx {
            profile,
            now,
            segments: results,
        };
        if self.timed {
            let (hit, next) = plan::matches_next(&self.rule, &cx, nexts);
            (hit, next.filter(|&t| t > now))
        } else {
            (plan::matches(&self.rule, &cx), None)
        }
    }
}

/// The version of how rules evaluate, part of [`SegmentSet::fingerprint`]: a release that
/// changes what a rule means or when it flips bumps it, and every profile is re-evaluated once
/// (an event re-evaluates only the segments whose rules read what it changed, so a membership
/// left over from other semantics would otherwise stay). 2: sums in windows flip at the time
/// evaluation takes them to (the timer was computed with other rounding).
pub const RULES_ENGINE: u32 = 2;

/// Each segment's next change as a profile's last evaluation under one [`SegmentSet`] worked it
/// out, kept with the profile in memory only (not in its state: a decoded profile has none).
///
/// An event evaluates only the segments whose rules read something it changed; the others
/// keep their results, and their next changes are where the last evaluation put them (their
/// inputs did not change, and the time has not reached them: a due timer fires before the
/// event). Where that is known, the profile's next timer is found without walking the rules
/// left alone ([`SegmentSet::evaluate_with_next`]), and a timer evaluates only the segments
/// due and those that use them ([`SegmentSet::evaluate_due`]); a segment whose
/// next change was never worked out (a decoded profile, definitions changed) is
/// [`KnownNexts::UNKNOWN`] until an evaluation works it out. Compares equal to any other: it
/// is a cache of the profile's values, not one of them.
#[derive(Debug, Clone, Default)]
pub struct KnownNexts {
    /// [`SegmentSet::id`] of the set that worked them out (0: none).
    set: u64,
    /// The segments whose next change is not [`Self::NEVER`], as bits (a word per 64 segments,
    /// in evaluation order), then those segments' next changes (or [`Self::UNKNOWN`]), in the
    /// same order; empty when every one is never. For a given shopper most segments never change
    /// with time alone: one value per segment was 168 bytes with the shipped 21 (a 192-byte
    /// block in every cached profile), where a shopper with one to three segments that may
    /// (or not worked out: a profile read from its state keeps those its first event did not
    /// evaluate) holds 32, the list's least capacity; more by doubling, kept up to twice what
    /// the last evaluation used.
    /// The price is unpacking and packing them at each evaluation: about 500 instructions per
    /// event in the core bench's apply + evaluate (9,244 before; a boxed slice of the exact
    /// length, allocated again whenever the count changed: about 770; changing an event's few
    /// segments in place when the same ones are kept saved nothing measurable).
    packed: Vec<u64>,
}

/// One raw next change per segment ([`KnownNexts::NEVER`], [`KnownNexts::UNKNOWN`] or a time),
/// while a pass works with them: on the stack up to 64 segments.
type Dense = smallvec::SmallVec<[i64; 64]>;

impl KnownNexts {
    /// See [`crate::profile::Profile::prefetch`].
    #[inline]
    pub(crate) fn prefetch(&self) {
        if !self.packed.is_empty() {
            crate::profile::prefetch_line(self.packed.as_ptr().cast());
        }
    }

    /// Worked out by an evaluation (a profile read from its state has none until its first).
    pub fn worked_out(&self) -> bool {
        self.set != 0
    }

    /// Worked out by `set` (and not since by another).
    fn of(&self, set: &SegmentSet) -> bool {
        self.set == set.id && set.id != 0
    }

    /// The raw next change of each of `n` segments, into `out` (cleared first).
    fn unpack(&self, n: usize, out: &mut Dense) {
        // Copied from a static (`resize` pushes one by one; an array literal here is written
        // out on the stack at each call).
        static NEVERS: [i64; 64] = [KnownNexts::NEVER; 64];
        out.clear();
        if n <= 64 {
            out.extend_from_slice(&NEVERS[..n]);
        } else {
            out.resize(n, Self::NEVER);
        }
        let words = n.div_ceil(64);
        if self.packed.len() <= words {
            return;
        }
        let mut value = words;
        for (w, &word) in self.packed[..words].iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                out[w * 64 + bits.trailing_zeros() as usize] = self.packed[value] as i64;
                bits &= bits - 1;
                value += 1;
            }
        }
        debug_assert_eq!(
            value,
            self.packed.len(),
            "a value per bit, and a bit per value"
        );
    }

    /// Keeps `raw(i)`, the raw next change of each of `n` segments, as worked out by `set`
    /// (in the list's allocation, which it keeps; none when every one is never).
    fn pack(&mut self, set: u64, n: usize, raw: impl Fn(usize) -> i64) {
        self.set = set;
        let Some(first) = (0..n).find(|&i| raw(i) != Self::NEVER) else {
            self.packed = Vec::new();
            return;
        };
        let words = n.div_ceil(64);
        self.packed.clear();
        self.packed.resize(words, 0);
        for i in first..n {
            let t = raw(i);
            if t != Self::NEVER {
                self.packed[i / 64] |= 1 << (i % 64);
                self.packed.push(t as u64);
            }
        }
        // Room kept for a later evaluation's, not for ever (the cache counts the capacity).
        if self.packed.capacity() > 2 * self.packed.len().max(4) {
            self.packed.shrink_to_fit();
        }
    }
}

impl crate::footprint::Footprint for KnownNexts {
    fn heap(&self, m: &mut crate::footprint::Meter) {
        let KnownNexts { set: _, packed } = self;
        m.list(packed);
    }
}

impl KnownNexts {
    /// The segment's result does not change with time alone.
    const NEVER: i64 = i64::MAX;
    /// Not worked out: at or after the profile's next timer.
    const UNKNOWN: i64 = i64::MIN;

    fn raw(next: Option<i64>) -> i64 {
        next.unwrap_or(Self::NEVER)
    }

    fn next(raw: i64) -> Option<i64> {
        (raw != Self::NEVER).then_some(raw)
    }

    /// Each of the `n` segments' raw next change.
    #[cfg(test)]
    fn dense(&self, n: usize) -> Dense {
        let mut dense = Dense::new();
        self.unpack(n, &mut dense);
        dense
    }

    /// How many of the `n` segments' next changes are known (none unless worked out).
    #[cfg(test)]
    pub(crate) fn known(&self, n: usize) -> usize {
        if self.set == 0 {
            return 0;
        }
        self.dense(n)
            .iter()
            .filter(|&&t| t != Self::UNKNOWN)
            .count()
    }

    /// The raw next change of segment `i` of `n`.
    #[cfg(test)]
    pub(crate) fn at(&self, n: usize, i: usize) -> i64 {
        self.dense(n)[i]
    }

    /// Sets the next change of segment `i` of `n` to `t`.
    #[cfg(test)]
    pub(crate) fn set_at(&mut self, n: usize, i: usize, t: i64) {
        let mut dense = self.dense(n);
        dense[i] = t;
        self.pack(self.set, n, |j| dense[j]);
    }
}

impl PartialEq for KnownNexts {
    fn eq(&self, _: &KnownNexts) -> bool {
        true
    }
}

/// A new [`SegmentSet::id`]: never 0, never given twice in a process.
fn next_set_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// The compiled segments, in evaluation (dependency) order, and the journeys.
#[derive(Debug, Clone, Default)]
pub struct SegmentSet {
    /// Which compilation this is (a clone keeps it: same definitions, same results), for
    /// [`KnownNexts`]; 0 for the empty default.
    id: u64,
    segments: Vec<Segment>,
    journeys: Vec<Journey>,
    /// What the segments' rules read of a profile.
    reads: crate::profile::RuleReads,
    /// The results of a profile that saw nothing yet, when they are the same at any time and
    /// no timer would follow (they stand for the stored results before a shopper's first
    /// event, [`Self::evaluate_with_next`]).
    empty: Option<Vec<bool>>,
    /// For each bit of [`plan::inputs`], the segments whose rules read it: a bit set per
    /// segment, [`Self::words`] words per input bit.
    by_input: Vec<u64>,
    words: usize,
}

impl SegmentSet {
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    pub fn len(&self) -> usize {
        self.segments.len()
    }

    /// The results of a profile that saw nothing yet, if they do not depend on the time.
    pub fn empty_results(&self) -> Option<&[bool]> {
        self.empty.as_deref()
    }

    /// The next changes of a profile that saw nothing yet, with [`Self::empty_results`]: none
    /// changes with time alone (that is what makes those results stand at any time). `None`
    /// without empty results.
    pub fn empty_nexts(&self) -> Option<KnownNexts> {
        self.empty.as_ref().map(|_| KnownNexts {
            set: self.id,
            packed: Vec::new(),
        })
    }

    fn find_empty_results(&self) -> Option<Vec<bool>> {
        let empty = Profile::default();
        let (mut early, mut late, mut nexts) = (Vec::new(), Vec::new(), Vec::new());
        let times = [0, 1_700_000_000_000, i64::MAX / 4];
        self.evaluate(&empty, times[0], &mut early);
        for now in times {
            let (_, next) = self.evaluate_with_next(&empty, now, None, &mut late, &mut nexts, None);
            if late != early || next.is_some() {
                return None;
            }
        }
        Some(early)
    }

    pub fn journeys(&self) -> &[Journey] {
        &self.journeys
    }

    /// Evaluates a journey's condition (true without one) with this pass's segment results.
    pub fn journey_condition(
        &self,
        j: &Journey,
        profile: &Profile,
        now: i64,
        results: &[bool],
    ) -> bool {
        j.when.as_ref().is_none_or(|rule| {
            plan::matches(
                rule,
                &Ctx {
                    profile,
                    now,
                    segments: results,
                },
            )
        })
    }

    /// [`Self::evaluate`], and the earliest time after `now` at which the passing of time alone
    /// may change a membership (each segment's in `nexts`), in one pass: each rule walked once
    /// (the value of a compared node serves its crossing). Fills `results` and `nexts`; returns
    /// how many segments kept their result and the earliest next change.
    ///
    /// With `keep` (what the event changed, [`plan::inputs::of_event`]; the stored results; and
    /// `earlier`, the profile's next timer before the event), only the segments whose rules read
    /// something the event changed are evaluated. For a profile evaluated under these
    /// definitions, with no timer due (they fired before the event), a rule that reads nothing
    /// the event changed has its stored result now (the passing of time alone changes it only at
    /// its next change, at or after that timer), and its next change is the one the last
    /// evaluation worked out: from `known` (the profile's [`KnownNexts`]) where it holds it;
    /// otherwise all that is known is that it is at or after `earlier`. When a segment
    /// evaluated now changes at or before `earlier`, the earliest is that one's; otherwise the
    /// left-alone segments that read the time and are not known have theirs worked out (the
    /// one `earlier` was may be one evaluated now, whose next change the event moved). `known`
    /// is then left with every next change this pass knows. The next change is never later
    /// than the pass without `keep`'s, and usually the same; it is earlier (a timer that finds
    /// nothing to change) where a rule evaluated now uses a left-alone segment that is not
    /// known (it reads `earlier` for it), or where a next change itself came early (a rule's
    /// can be an estimate: [`plan::next_change`]). Debug builds check the results and "never
    /// later" against the pass without `keep` at every event.
    pub fn evaluate_with_next(
        &self,
        profile: &Profile,
        now: i64,
        keep: Option<(u64, &[bool], Option<i64>)>,
        results: &mut Vec<bool>,
        nexts: &mut Vec<Option<i64>>,
        known: Option<&mut KnownNexts>,
    ) -> (u64, Option<i64>) {
        results.clear();
        nexts.clear();
        let Some((changed, stored, earlier)) = keep else {
            for seg in &self.segments {
                let (hit, next) = seg.evaluate_next(profile, now, results, nexts);
                results.push(hit);
                nexts.push(next);
            }
            if let Some(k) = known {
                k.pack(self.id, nexts.len(), |i| KnownNexts::raw(nexts[i]));
            }
            return (0, nexts.iter().flatten().min().copied());
        };
        // The next changes the profile's last evaluation under this set worked out (those of
        // the segments that do not read the time are known: never).
        let n = self.segments.len();
        let mut dense = Dense::new();
        let valid = match &known {
            Some(k) if k.of(self) => {
                k.unpack(n, &mut dense);
                true
            }
            _ => false,
        };
        let cached: Option<&[i64]> = valid.then_some(&dense[..]);
        // Every segment keeps its result and its next change (`earlier` where it is not
        // known), then the ones whose rules read something the event changed are evaluated,
        // in order (a rule uses only segments before it, whose results are final by then).
        let earlier = earlier.filter(|&t| t > now);
        results.extend_from_slice(stored);
        match cached {
            Some(at) => nexts.extend(self.segments.iter().zip(at).map(|(s, &t)| {
                if t == KnownNexts::UNKNOWN {
                    earlier.filter(|_| s.timed)
                } else {
                    debug_assert!(t > now, "a known next change {t} not after {now}");
                    KnownNexts::next(t)
                }
            })),
            None => nexts.extend(self.segments.iter().map(|s| earlier.filter(|_| s.timed))),
        }
        let mut evaluated = 0;
        // The earliest next change of the segments evaluated now, and whether any of them
        // reads the time (only those have next changes).
        let mut soonest: Option<i64> = None;
        let mut timed = false;
        for w in 0..self.words {
            let mut word = self.evaluated_word(changed, w);
            while word != 0 {
                let i = w * 64 + word.trailing_zeros() as usize;
                word &= word - 1;
                let (hit, next) = self.segments[i].evaluate_next(profile, now, results, nexts);
                results[i] = hit;
                nexts[i] = next;
                soonest = match (soonest, next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                timed |= self.segments[i].timed;
                evaluated += 1;
            }
        }
        let skipped = (self.segments.len() - evaluated) as u64;
        // `earlier` may be the next change of a segment evaluated just now (one that reads
        // the time), which the event moved later: the timer would then fire and find nothing
        // to change (in the worker a profile read, evaluated and written back for nothing).
        // When every segment evaluated now changes after `earlier`, or never, the segments
        // left alone that read the time have their own next changes worked out, so the timer
        // is theirs or the evaluated ones'. Otherwise the earliest is one evaluated now; and
        // with no segment evaluated that reads the time, `earlier` was a left-alone one's.
        // Those whose next change is known already have it.
        let mut worked_out = false;
        if let Some(e) = earlier.filter(|_| timed) {
            if soonest.is_none_or(|s| s > e) {
                worked_out = true;
                for w in 0..self.words {
                    let evaluated = self.evaluated_word(changed, w);
                    let end = self.segments.len().min(w * 64 + 64);
                    for i in w * 64..end {
                        if evaluated >> (i - w * 64) & 1 == 1
                            || !self.segments[i].timed
                            || cached.is_some_and(|at| at[i] != KnownNexts::UNKNOWN)
                        {
                            continue;
                        }
                        let (_, next) =
                            self.segments[i].evaluate_next(profile, now, results, nexts);
                        nexts[i] = next;
                    }
                }
            }
        }
        if let Some(k) = known {
            // Known now: every one after working them out; otherwise those evaluated, those
            // known before, and those that do not read the time.
            if worked_out {
                k.pack(self.id, n, |i| KnownNexts::raw(nexts[i]));
            } else {
                if !valid {
                    dense.clear();
                    dense.extend(self.segments.iter().map(|s| {
                        if s.timed {
                            KnownNexts::UNKNOWN
                        } else {
                            KnownNexts::NEVER
                        }
                    }));
                }
                for w in 0..self.words {
                    let mut word = self.evaluated_word(changed, w);
                    while word != 0 {
                        let i = w * 64 + word.trailing_zeros() as usize;
                        word &= word - 1;
                        dense[i] = KnownNexts::raw(nexts[i]);
                    }
                }
                k.pack(self.id, n, |i| dense[i]);
            }
        }
        (skipped, nexts.iter().flatten().min().copied())
    }

    /// A timer's evaluation at `now`, its due time, from the profile's next changes (`known`)
    /// and stored results: only the segments whose next change is due by `now`, and those that
    /// use them (`in_segment`), are evaluated; the others keep their results and next changes
    /// (nothing they read changed, and the time has not reached their next change). Fills
    /// `results` and `nexts` and brings `known` up to date, as [`Self::evaluate_with_next`]
    /// does; returns how many segments kept their result and the earliest next change. `None`
    /// (nothing done) when a next change is not known: the timer then evaluates everything.
    pub fn evaluate_due(
        &self,
        profile: &Profile,
        now: i64,
        stored: &[bool],
        results: &mut Vec<bool>,
        nexts: &mut Vec<Option<i64>>,
        known: &mut KnownNexts,
    ) -> Option<(u64, Option<i64>)> {
        let n = self.segments.len();
        if !known.of(self) || stored.len() != n {
            return None;
        }
        let mut at = Dense::new();
        known.unpack(n, &mut at);
        if at.contains(&KnownNexts::UNKNOWN) {
            return None;
        }
        results.clear();
        results.extend_from_slice(stored);
        nexts.clear();
        nexts.extend(at.iter().map(|&t| KnownNexts::next(t)));
        // Evaluated, by place: due now, or using one that is (`deps` lists every segment a
        // rule uses, directly or not, all before it).
        // On the stack up to 64 segments: this runs at every timer fired.
        let mut evaluated: smallvec::SmallVec<[bool; 64]> = smallvec::smallvec![false; n];
        let mut skipped = 0;
        for (i, seg) in self.segments.iter().enumerate() {
            let due = at[i] <= now;
            if !due && !seg.deps.iter().any(|&d| evaluated[d]) {
                skipped += 1;
                continue;
            }
            evaluated[i] = true;
            let (hit, next) = seg.evaluate_next(profile, now, results, nexts);
            results[i] = hit;
            nexts[i] = next;
            at[i] = KnownNexts::raw(next);
        }
        known.pack(self.id, n, |i| at[i]);
        Some((skipped, nexts.iter().flatten().min().copied()))
    }

    /// Which segments of word `w` (64 per word, in evaluation order) read something in
    /// `changed` ([`plan::inputs`] bits), as bits.
    #[inline]
    fn evaluated_word(&self, changed: u64, w: usize) -> u64 {
        let (mut bits, mut word) = (changed, 0u64);
        while bits != 0 {
            word |= self.by_input[bits.trailing_zeros() as usize * self.words + w];
            bits &= bits - 1;
        }
        word
    }

    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// What the segments' rules read of a profile (explanations copy only that).
    pub fn reads(&self) -> &crate::profile::RuleReads {
        &self.reads
    }

    /// The position of segment `id` in [`Self::segments`].
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.segments.iter().position(|s| s.id == id)
    }

    /// What flipped segment `index` between two evaluations (`before` and `after` carry their
    /// pass's results of the segments evaluated before it), which gave it `was` and `is`.
    pub fn flip(
        &self,
        index: usize,
        before: &Ctx,
        after: &Ctx,
        was: bool,
        is: bool,
    ) -> Option<crate::wire::Explanation> {
        self.segments[index]
            .explain
            .as_ref()
            .and_then(|p| p.flip_known(before, after, was, is))
    }

    /// Segment `index`'s rule evaluated for `profile` at `now`, node by node, with when the
    /// passing of time will next change each node.
    pub fn explain(&self, index: usize, profile: &Profile, now: i64) -> Option<Evaluated> {
        let (mut results, mut nexts) = (Vec::new(), Vec::new());
        self.evaluate_with_next(profile, now, None, &mut results, &mut nexts, None);
        let cx = Ctx {
            profile,
            now,
            segments: &results,
        };
        self.segments[index]
            .explain
            .as_ref()
            .map(|p| p.evaluate(&cx, &nexts))
    }

    /// A fingerprint of what decides memberships: every segment's id and rule (whitespace
    /// aside), and [`RULES_ENGINE`]. Profiles are re-evaluated when it changes; names,
    /// descriptions and journeys do not count.
    pub fn fingerprint(&self) -> u64 {
        let mut parts: Vec<String> = self
            .segments
            .iter()
            .map(|s| format!("{}\u{1f}{}", s.id, s.rule_text()))
            .collect();
        parts.sort();
        parts.push(format!("engine {RULES_ENGINE}"));
        xxhash_rust::xxh3::xxh3_64(parts.join("\u{1e}").as_bytes())
    }

    /// (added, changed, removed) segment ids between `old` and this set, for logs.
    pub fn diff(&self, old: &SegmentSet) -> (Vec<String>, Vec<String>, Vec<String>) {
        let mut added = Vec::new();
        let mut changed = Vec::new();
        for s in &self.segments {
            match old.segments.iter().find(|o| o.id == s.id) {
                None => added.push(s.id.clone()),
                Some(o) if o.rule_text() != s.rule_text() => changed.push(s.id.clone()),
                Some(_) => {}
            }
        }
        let removed = old
            .segments
            .iter()
            .filter(|o| !self.segments.iter().any(|s| s.id == o.id))
            .map(|o| o.id.clone())
            .collect();
        (added, changed, removed)
    }

    /// Evaluates every segment for `profile` at stream time `now` into `out` (one flag per
    /// segment, in [`Self::segments`] order). Does not allocate once `out` has its capacity.
    pub fn evaluate(&self, profile: &Profile, now: i64, out: &mut Vec<bool>) {
        out.clear();
        for seg in &self.segments {
            let hit = plan::matches(
                &seg.rule,
                &Ctx {
                    profile,
                    now,
                    segments: out,
                },
            );
            out.push(hit);
        }
    }

    /// Segment `index`'s result, and those of the segments its rule uses, into `results`, as
    /// [`Self::evaluate`] (or, with `keep`, [`Self::evaluate_with_next`]) gives them: for the few
    /// results a pass needs, not every one. A segment already `done` is not evaluated again;
    /// `results` and `done` hold one place per segment.
    pub fn evaluate_one(
        &self,
        index: usize,
        profile: &Profile,
        now: i64,
        keep: Option<(u64, &[bool])>,
        results: &mut [bool],
        done: &mut [bool],
    ) {
        let seg = &self.segments[index];
        for &i in seg.deps.iter().chain(std::iter::once(&index)) {
            if done[i] {
                continue;
            }
            let s = &self.segments[i];
            results[i] = match keep.filter(|(changed, _)| s.inputs & changed == 0) {
                Some((_, stored)) => stored[i],
                None => plan::matches(
                    &s.rule,
                    &Ctx {
                        profile,
                        now,
                        segments: results,
                    },
                ),
            };
            done[i] = true;
        }
    }

    /// Parses and compiles a definitions file.
    pub fn parse(src: &str) -> Result<SegmentSet, DefinitionErrors> {
        let doc = load_yaml(src).map_err(|e| DefinitionErrors(vec![e]))?;
        let mut errors = Vec::new();
        let (defs, journeys) = read_definitions(&doc, &mut errors);
        let mut set = compile_all(src, defs, &mut errors);
        set.journeys = compile_journeys(src, &set, journeys, &mut errors);
        for seg in &set.segments {
            plan::reads(&seg.rule, &mut set.reads);
        }
        set.reads.normalise();
        set.words = set.segments.len().div_ceil(64);
        set.by_input = vec![0; 64 * set.words];
        for (i, seg) in set.segments.iter().enumerate() {
            for bit in (0..64).filter(|b| seg.inputs & (1 << b) != 0) {
                set.by_input[bit * set.words + i / 64] |= 1 << (i % 64);
            }
        }
        if errors.is_empty() {
            set.empty = set.find_empty_results();
            Ok(set)
        } else {
            errors.sort_by_key(|e| (e.line, e.col));
            Err(DefinitionErrors(errors))
        }
    }
}

// ------------------------------------------------------------------ YAML with positions

#[derive(Debug, Clone)]
enum Yaml {
    Scalar(String, TScalarStyle, Marker),
    Seq(Vec<Yaml>, Marker),
    Map(Vec<(Yaml, Yaml)>, Marker),
}

impl Yaml {
    fn mark(&self) -> Marker {
        match self {
            Yaml::Scalar(_, _, m) | Yaml::Seq(_, m) | Yaml::Map(_, m) => *m,
        }
    }
}

fn at(m: Marker, message: impl Into<String>) -> DefinitionError {
    DefinitionError {
        line: m.line(),
        col: m.col() + 1,
        message: message.into(),
    }
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Yaml>,
    keys: Vec<Option<Yaml>>,
    root: Option<Yaml>,
    error: Option<DefinitionError>,
}

impl TreeBuilder {
    fn push_value(&mut self, v: Yaml) {
        match self.stack.last_mut() {
            None => self.root = Some(v),
            Some(Yaml::Seq(items, _)) => items.push(v),
            Some(Yaml::Map(entries, _)) => {
                let slot = self.keys.last_mut().expect("a key slot per open map");
                match slot.take() {
                    None => *slot = Some(v),
                    Some(k) => entries.push((k, v)),
                }
            }
            Some(Yaml::Scalar(..)) => unreachable!("scalars are never open"),
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, ev: YamlEvent, mark: Marker) {
        match ev {
            YamlEvent::Scalar(s, style, _, _) => self.push_value(Yaml::Scalar(s, style, mark)),
            YamlEvent::SequenceStart(..) => self.stack.push(Yaml::Seq(Vec::new(), mark)),
            YamlEvent::MappingStart(..) => {
                self.stack.push(Yaml::Map(Vec::new(), mark));
                self.keys.push(None);
            }
            YamlEvent::SequenceEnd | YamlEvent::MappingEnd => {
                let done = self.stack.pop().expect("balanced YAML events");
                if matches!(done, Yaml::Map(..)) {
                    self.keys.pop();
                }
                self.push_value(done);
            }
            YamlEvent::Alias(_) if self.error.is_none() => {
                self.error = Some(at(mark, "YAML aliases are not supported in definitions"));
            }
            _ => {}
        }
    }
}

fn load_yaml(src: &str) -> Result<Yaml, DefinitionError> {
    let mut b = TreeBuilder::default();
    Parser::new_from_str(src)
        .load(&mut b, false)
        .map_err(|e| DefinitionError {
            line: e.marker().line(),
            col: e.marker().col() + 1,
            message: e.info().to_owned(),
        })?;
    if let Some(e) = b.error {
        return Err(e);
    }
    b.root.ok_or(DefinitionError {
        line: 1,
        col: 1,
        message: "empty definitions file".into(),
    })
}

// ------------------------------------------------------------------ definitions

struct Def {
    id: String,
    id_mark: Marker,
    name: Option<String>,
    description: Option<String>,
    rule: String,
    rule_style: TScalarStyle,
    rule_mark: Marker,
}

fn scalar<'a>(v: &'a Yaml, what: &str, errors: &mut Vec<DefinitionError>) -> Option<&'a str> {
    match v {
        Yaml::Scalar(s, ..) => Some(s),
        other => {
            errors.push(at(other.mark(), format!("{what} must be a text value")));
            None
        }
    }
}

fn read_definitions(doc: &Yaml, errors: &mut Vec<DefinitionError>) -> (Vec<Def>, Vec<JourneyDef>) {
    let Yaml::Map(top, _) = doc else {
        errors.push(at(doc.mark(), "expected a mapping with a 'segments' list"));
        return (Vec::new(), Vec::new());
    };
    let mut list = None;
    let mut journeys = Vec::new();
    for (k, v) in top {
        match scalar(k, "key", errors) {
            Some("segments") => list = Some(v),
            Some("journeys") => journeys = read_journeys(v, errors),
            Some(other) => errors.push(at(
                k.mark(),
                format!("unknown top-level key '{other}'; expected 'segments' or 'journeys'"),
            )),
            None => {}
        }
    }
    let Some(list) = list else {
        errors.push(at(doc.mark(), "missing 'segments' list"));
        return (Vec::new(), journeys);
    };
    let Yaml::Seq(items, _) = list else {
        errors.push(at(list.mark(), "'segments' must be a list"));
        return (Vec::new(), journeys);
    };
    let mut defs = Vec::new();
    for item in items {
        let Yaml::Map(fields, m) = item else {
            errors.push(at(
                item.mark(),
                "each segment must be a mapping with id and rule",
            ));
            continue;
        };
        let (mut id, mut name, mut description, mut rule) = (None, None, None, None);
        for (k, v) in fields {
            let Some(key) = scalar(k, "key", errors) else {
                continue;
            };
            match key {
                "id" => id = scalar(v, "id", errors).map(|s| (s.to_owned(), v.mark())),
                "name" => name = scalar(v, "name", errors).map(str::to_owned),
                "description" => description = scalar(v, "description", errors).map(str::to_owned),
                "rule" => {
                    if let Yaml::Scalar(s, style, mark) = v {
                        rule = Some((s.clone(), *style, *mark));
                    } else {
                        errors.push(at(v.mark(), "rule must be a text value"));
                    }
                }
                other => errors.push(at(
                    k.mark(),
                    format!(
                        "unknown key '{other}' in a segment; expected id, name, description, rule"
                    ),
                )),
            }
        }
        let Some((id, id_mark)) = id else {
            errors.push(at(*m, "segment has no 'id'"));
            continue;
        };
        if !valid_id(&id) {
            errors.push(at(
                id_mark,
                format!("segment id {id:?} must be 1-64 characters of a-z, 0-9, '-', '_'"),
            ));
            continue;
        }
        let Some((rule, rule_style, rule_mark)) = rule else {
            errors.push(at(*m, format!("segment '{id}' has no 'rule'")));
            continue;
        };
        defs.push(Def {
            id,
            id_mark,
            name,
            description,
            rule,
            rule_style,
            rule_mark,
        });
    }
    (defs, journeys)
}

/// A journey as written, before compiling.
struct JourneyDef {
    id: String,
    name: Option<String>,
    description: Option<String>,
    /// (key, value, value's position): on_event, on_enter or on_exit.
    trigger: Option<(String, Yaml)>,
    when: Option<Def>,
    reentry_wait: i64,
    consent: Consent,
    mark: Marker,
}

fn read_journeys(v: &Yaml, errors: &mut Vec<DefinitionError>) -> Vec<JourneyDef> {
    let Yaml::Seq(items, _) = v else {
        errors.push(at(v.mark(), "'journeys' must be a list"));
        return Vec::new();
    };
    let mut out = Vec::new();
    for item in items {
        let Yaml::Map(fields, m) = item else {
            errors.push(at(
                item.mark(),
                "each journey must be a mapping with id and a trigger",
            ));
            continue;
        };
        let mut j = JourneyDef {
            id: String::new(),
            name: None,
            description: None,
            trigger: None,
            when: None,
            reentry_wait: 0,
            consent: Consent::None,
            mark: *m,
        };
        let mut id_mark = *m;
        for (k, v) in fields {
            let Some(key) = scalar(k, "key", errors) else {
                continue;
            };
            match key {
                "id" => {
                    if let Some(s) = scalar(v, "id", errors) {
                        j.id = s.to_owned();
                        id_mark = v.mark();
                    }
                }
                "name" => j.name = scalar(v, "name", errors).map(str::to_owned),
                "description" => j.description = scalar(v, "description", errors).map(str::to_owned),
                "on_event" | "on_enter" | "on_exit" => {
                    if j.trigger.is_some() {
                        errors.push(at(k.mark(), "a journey has exactly one of on_event, on_enter, on_exit"));
                    }
                    j.trigger = Some((key.to_owned(), v.clone()));
                }
                "when" => {
                    if let Yaml::Scalar(s, style, mark) = v {
                        j.when = Some(Def {
                            id: String::new(),
                            id_mark: *mark,
                            name: None,
                            description: None,
                            rule: s.clone(),
                            rule_style: *style,
                            rule_mark: *mark,
                        });
                    } else {
                        errors.push(at(v.mark(), "when must be a text value"));
                    }
                }
                "reentry_wait" => {
                    if let Some(s) = scalar(v, "reentry_wait", errors) {
                        match expr::parse_duration(s) {
                            Some(ms) => j.reentry_wait = ms,
                            None => errors.push(at(v.mark(), format!("reentry_wait {s:?} is not a duration such as 30m, 24h or 7d"))),
                        }
                    }
                }
                "consent" => match scalar(v, "consent", errors) {
                    Some("email") => j.consent = Consent::Email,
                    Some("sms") => j.consent = Consent::Sms,
                    Some("none") => j.consent = Consent::None,
                    Some(other) => errors.push(at(v.mark(), format!("consent {other:?}: expected email, sms or none"))),
                    None => {}
                },
                other => errors.push(at(
                    k.mark(),
                    format!("unknown key '{other}' in a journey; expected id, name, description, on_event, on_enter, on_exit, when, reentry_wait, consent"),
                )),
            }
        }
        if !valid_id(&j.id) {
            errors.push(at(
                id_mark,
                format!(
                    "journey id {:?} must be 1-64 characters of a-z, 0-9, '-', '_'",
                    j.id
                ),
            ));
            continue;
        }
        if j.trigger.is_none() {
            errors.push(at(
                *m,
                format!(
                    "journey '{}' needs one of on_event, on_enter, on_exit",
                    j.id
                ),
            ));
            continue;
        }
        out.push(j);
    }
    out
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-' || c == b'_')
}

fn compile_journeys(
    src: &str,
    set: &SegmentSet,
    defs: Vec<JourneyDef>,
    errors: &mut Vec<DefinitionError>,
) -> Vec<Journey> {
    let index: HashMap<String, usize> = set
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| (s.id.clone(), i))
        .collect();
    let mut seen: HashMap<String, ()> = HashMap::new();
    let mut out = Vec::new();
    for d in defs {
        if seen.insert(d.id.clone(), ()).is_some() {
            errors.push(at(d.mark, format!("duplicate journey id '{}'", d.id)));
            continue;
        }
        let (key, value) = d.trigger.expect("checked when read");
        let trigger = match key.as_str() {
            "on_event" => {
                let names: Vec<(String, Marker)> = match &value {
                    Yaml::Scalar(s, _, m) => vec![(s.clone(), *m)],
                    Yaml::Seq(items, _) => items
                        .iter()
                        .filter_map(|i| {
                            scalar(i, "an event type", errors).map(|s| (s.to_owned(), i.mark()))
                        })
                        .collect(),
                    Yaml::Map(_, m) => {
                        errors.push(at(*m, "on_event is an event type or a list of them"));
                        continue;
                    }
                };
                let mut kinds = Vec::new();
                for (name, m) in names {
                    match EventType::parse(&name) {
                        Some(k) => kinds.push(k),
                        None => errors.push(at(m, format!("unknown event type '{name}'"))),
                    }
                }
                if kinds.is_empty() {
                    continue;
                }
                Trigger::Event(kinds)
            }
            enter_or_exit => {
                let Some(seg) = scalar(&value, enter_or_exit, errors) else {
                    continue;
                };
                let Some(&i) = index.get(seg) else {
                    errors.push(at(value.mark(), format!("unknown segment '{seg}'")));
                    continue;
                };
                if enter_or_exit == "on_enter" {
                    Trigger::Enter(i)
                } else {
                    Trigger::Exit(i)
                }
            }
        };
        let when = match &d.when {
            None => None,
            Some(w) => {
                let mut scope = OrderScope { index: &index };
                let compiled = expr::parse(&w.rule).and_then(|e| plan::compile(&e, &mut scope));
                match compiled {
                    Ok((rule, plan::Type::Bool)) => Some(rule),
                    Ok(_) => {
                        errors.push(at(w.rule_mark, "a condition must be true or false"));
                        continue;
                    }
                    Err(e) => {
                        let (line, col) = rule_position(src, w, e.offset);
                        errors.push(DefinitionError {
                            line,
                            col,
                            message: e.message,
                        });
                        continue;
                    }
                }
            }
        };
        out.push(Journey {
            id: d.id,
            name: d.name,
            description: d.description,
            trigger,
            when,
            reentry_wait: d.reentry_wait,
            consent: d.consent,
        });
    }
    out
}

/// Maps a byte offset in a rule to its line and column in the file.
fn rule_position(src: &str, d: &Def, offset: usize) -> (usize, usize) {
    // "End of rule" errors point just after the last non-blank character.
    let before = &d.rule[..offset.min(d.rule.trim_end().len())];
    let newlines = before.matches('\n').count();
    let col_in_line = before.rsplit('\n').next().map_or(0, |s| s.chars().count());
    match d.rule_style {
        TScalarStyle::Folded => {
            // The block's lines are joined (by spaces, blank lines by newlines): find each
            // source line's text in the rule, in order from the first content line (the parser's
            // mark), and stop at the one holding `offset`. An offset between two lines' texts
            // (a separator) points at the start of the next.
            let target = before.len();
            let first = d.rule_mark.line();
            let mut pos = 0;
            for (line, text) in (first..).zip(src.lines().skip(first.saturating_sub(1))) {
                let content = text.trim();
                if content.is_empty() {
                    continue;
                }
                let Some(found) = d.rule.get(pos..).and_then(|r| r.find(content)) else {
                    break;
                };
                let found = pos + found;
                let end = found + content.len();
                if target <= end {
                    let col = target.saturating_sub(found);
                    let col = content.get(..col).map_or(col, |c| c.chars().count());
                    let indent = text.len() - text.trim_start().len();
                    return (line, indent + col + 1);
                }
                pos = end;
            }
            (d.rule_mark.line(), 1)
        }
        TScalarStyle::Literal => {
            // Block scalar: the parser marks its first non-blank content line; columns follow
            // that line's indentation.
            let leading_blank = d.rule.len() - d.rule.trim_start_matches('\n').len();
            let line = d.rule_mark.line() + newlines.saturating_sub(leading_blank);
            let indent = src
                .lines()
                .nth(line - 1)
                .map_or(0, |l| l.len() - l.trim_start().len());
            (line, indent + col_in_line + 1)
        }
        style => {
            let quote = usize::from(matches!(
                style,
                TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted
            ));
            if newlines == 0 {
                (
                    d.rule_mark.line(),
                    d.rule_mark.col() + 1 + quote + col_in_line,
                )
            } else {
                (d.rule_mark.line() + newlines, col_in_line + 1)
            }
        }
    }
}

fn segment_refs(e: &expr::Expr, out: &mut Vec<(String, usize)>) {
    use expr::ExprKind::*;
    match &e.kind {
        Call(name, args) => {
            if name == "in_segment" {
                if let Some(expr::Expr {
                    kind: Str(id), at, ..
                }) = args.first()
                {
                    out.push((id.clone(), *at));
                }
            }
            args.iter().for_each(|a| segment_refs(a, out));
        }
        Not(x) | Neg(x) => segment_refs(x, out),
        Bin(_, l, r) => {
            segment_refs(l, out);
            segment_refs(r, out);
        }
        In(x, items) => {
            segment_refs(x, out);
            items.iter().for_each(|a| segment_refs(a, out));
        }
        _ => {}
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Visit {
    New,
    Visiting,
    Done,
}

/// Depth-first topological sort of segments by their `in_segment` references.
struct Topo<'a> {
    defs: &'a [Def],
    refs: &'a [Vec<(String, usize)>],
    seen: &'a HashMap<&'a str, usize>,
    state: Vec<Visit>,
    order: Vec<usize>,
    src: &'a str,
}

impl Topo<'_> {
    fn visit(&mut self, i: usize, errors: &mut Vec<DefinitionError>) {
        if self.state[i] != Visit::New {
            return;
        }
        self.state[i] = Visit::Visiting;
        for (id, off) in &self.refs[i] {
            match self.seen.get(id.as_str()) {
                None => {} // reported by the compiler, with its position
                Some(&j) if self.state[j] == Visit::Visiting => {
                    let (line, col) = rule_position(self.src, &self.defs[i], *off);
                    errors.push(DefinitionError {
                        line,
                        col,
                        message: format!(
                            "segment '{}' depends on itself through '{id}'",
                            self.defs[i].id
                        ),
                    });
                }
                Some(&j) => self.visit(j, errors),
            }
        }
        self.state[i] = Visit::Done;
        self.order.push(i);
    }
}

struct OrderScope<'a> {
    index: &'a HashMap<String, usize>,
}

impl plan::Scope for OrderScope<'_> {
    fn segment(&mut self, id: &str, at: usize) -> Result<usize, ExprError> {
        self.index.get(id).copied().ok_or_else(|| ExprError {
            offset: at,
            message: format!("unknown segment '{id}'"),
        })
    }
}

fn compile_all(src: &str, defs: Vec<Def>, errors: &mut Vec<DefinitionError>) -> SegmentSet {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut parsed = Vec::with_capacity(defs.len());
    for (i, d) in defs.iter().enumerate() {
        if seen.insert(&d.id, i).is_some() {
            errors.push(at(d.id_mark, format!("duplicate segment id '{}'", d.id)));
        }
        match expr::parse(&d.rule) {
            Ok(e) => parsed.push(Some(e)),
            Err(e) => {
                let (line, col) = rule_position(src, d, e.offset);
                errors.push(DefinitionError {
                    line,
                    col,
                    message: e.message,
                });
                parsed.push(None);
            }
        }
    }
    // Dependency order (depth-first topological sort), reporting unknown ids and cycles.
    let refs: Vec<Vec<(String, usize)>> = parsed
        .iter()
        .map(|p| {
            let mut v = Vec::new();
            if let Some(e) = p {
                segment_refs(e, &mut v);
            }
            v
        })
        .collect();
    let mut topo = Topo {
        defs: &defs,
        refs: &refs,
        seen: &seen,
        state: vec![Visit::New; defs.len()],
        order: Vec::with_capacity(defs.len()),
        src,
    };
    for i in 0..defs.len() {
        topo.visit(i, errors);
    }
    let order = topo.order;
    let index: HashMap<String, usize> = order
        .iter()
        .enumerate()
        .map(|(pos, &i)| (defs[i].id.clone(), pos))
        .collect();
    let mut segments = Vec::with_capacity(defs.len());
    let mut defs: Vec<Option<Def>> = defs.into_iter().map(Some).collect();
    for &i in &order {
        let d = defs[i].take().expect("each definition once");
        let Some(e) = &parsed[i] else { continue };
        match plan::compile(e, &mut OrderScope { index: &index }) {
            Ok((rule, plan::Type::Bool)) => {
                let timed_so_far: Vec<bool> = segments.iter().map(|s: &Segment| s.timed).collect();
                let inputs_so_far: Vec<u64> = segments.iter().map(|s: &Segment| s.inputs).collect();
                let explain =
                    explain::build(e, &d.rule, &mut OrderScope { index: &index }, &|offset| {
                        rule_position(src, &d, offset)
                    });
                let mut uses: Vec<String> = refs[i].iter().map(|(id, _)| id.clone()).collect();
                uses.sort();
                uses.dedup();
                // Places are those in `order`: they match `segments` only when every rule
                // compiled (otherwise the set is refused).
                let mut deps: Vec<usize> = Vec::new();
                for j in uses.iter().filter_map(|id| index.get(id)) {
                    deps.push(*j);
                    deps.extend(segments.get(*j).map_or(&[][..], |s: &Segment| &s.deps));
                }
                deps.sort_unstable();
                deps.dedup();
                segments.push(Segment {
                    explain,
                    uses,
                    deps,
                    id: d.id,
                    name: d.name,
                    description: d.description,
                    source: d.rule,
                    timed: plan::timed(&rule, &timed_so_far),
                    inputs: plan::inputs_of(&rule, &inputs_so_far),
                    rule,
                })
            }
            Ok((_, _)) => {
                let (line, col) = rule_position(src, &d, 0);
                errors.push(DefinitionError {
                    line,
                    col,
                    message: "a rule must be a condition (true or false)".into(),
                });
            }
            Err(e) => {
                let (line, col) = rule_position(src, &d, e.offset);
                errors.push(DefinitionError {
                    line,
                    col,
                    message: e.message,
                });
            }
        }
    }
    SegmentSet {
        id: next_set_id(),
        segments,
        journeys: Vec::new(),
        reads: Default::default(),
        empty: None,
        by_input: Vec::new(),
        words: 0,
    }
}

#[cfg(test)]
mod tests;
