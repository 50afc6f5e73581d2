//! The core's entry point: apply an event to a profile, re-evaluate its segments, and say who
//! entered and who exited. Synchronous, no I/O.
//!
//! Output ids are derived from the cause (profile key, segment, direction, causing event id), so
//! re-processing the same input after a crash gives the same ids and consumers can drop
//! duplicates.

use std::sync::Arc;

use xxhash_rust::xxh3::xxh3_128;

use crate::event::Event;
use crate::profile::{Membership, Profile};
use crate::segments::SegmentSet;
use crate::wire::{AudienceChange, Cause, Direction};

/// Where the causing message came from (carried into the output's cause).
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

/// Deterministic output id: 32 hex digits of a 128-bit hash of the parts.
pub fn output_id(parts: &[&str]) -> String {
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 1).sum());
    for p in parts {
        buf.extend_from_slice(p.as_bytes());
        buf.push(0x1f); // unit separator: ("ab","c") and ("a","bc") differ
    }
    format!("{:032x}", xxh3_128(&buf))
}

/// Applies events and evaluates segments; holds only reusable scratch space.
pub struct Core {
    segments: Arc<SegmentSet>,
    results: Vec<bool>,
}

impl Core {
    pub fn new(segments: Arc<SegmentSet>) -> Core {
        let results = Vec::with_capacity(segments.len());
        Core { segments, results }
    }

    pub fn segments(&self) -> &SegmentSet {
        &self.segments
    }

    /// Applies `ev` to `profile` (stored under `key`) and appends the audience changes to `out`.
    pub fn process(
        &mut self,
        key: &str,
        profile: &mut Profile,
        ev: &Event,
        source: Source,
        out: &mut Vec<AudienceChange>,
    ) {
        profile.apply(ev);
        // Rules run on event time: the profile's clock is the latest event time it has seen.
        let now = profile.last_seen.unwrap_or(ev.time);
        self.segments.evaluate(profile, now, &mut self.results);
        for (seg, &member) in self.segments.segments().iter().zip(&self.results) {
            let pos = profile
                .segments
                .binary_search_by(|m| m.segment.as_str().cmp(&seg.id));
            let direction = match (member, pos) {
                (true, Err(i)) => {
                    profile.segments.insert(
                        i,
                        Membership {
                            segment: seg.id.clone(),
                            since: ev.time,
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
            out.push(AudienceChange {
                id: output_id(&[key, &seg.id, direction.as_str(), &ev.id]),
                profile_key: key.to_owned(),
                identity: profile.identity(),
                segment_id: seg.id.clone(),
                direction,
                event_time: ev.time,
                cause: Cause {
                    kind: "event".into(),
                    event_id: Some(ev.id.clone()),
                    event_type: Some(ev.kind.name().into()),
                    segment_id: None,
                    source_topic: Some(source.topic.to_owned()),
                    source_partition: Some(source.partition),
                    source_offset: Some(source.offset),
                },
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{EventType, Line};
    use crate::wire::Identity;

    const RULES: &str = r#"
segments:
  - id: cart-holders
    rule: cart.items > 0
  - id: big-cart
    rule: in_segment("cart-holders") and cart.value >= 100
"#;

    fn add(id: &str, time: i64, qty: f64) -> Event {
        Event {
            id: id.into(),
            kind: EventType::AddToCart,
            time,
            identity: Identity {
                ecid: Some("e1".into()),
                ..Default::default()
            },
            value: qty * 60.0,
            device: None,
            channel: None,
            lines: vec![Line {
                sku: "S".into(),
                quantity: qty,
                price: Some(60.0),
                ..Default::default()
            }],
            cart: None,
            order_id: None,
            search_phrase: None,
            search_results: None,
            attributes: None,
        }
    }

    fn src() -> Source<'static> {
        Source {
            topic: "commerce.storefront",
            partition: 0,
            offset: 7,
        }
    }

    #[test]
    fn enters_once_then_exits_with_stable_ids() {
        let mut core = Core::new(Arc::new(SegmentSet::parse(RULES).unwrap()));
        let mut p = Profile::default();
        let mut out = Vec::new();
        core.process("k1", &mut p, &add("a", 1_000, 1.0), src(), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].segment_id.as_str(), out[0].direction),
            ("cart-holders", Direction::Entered)
        );
        core.process("k1", &mut p, &add("b", 2_000, 1.0), src(), &mut out);
        assert_eq!(out.len(), 2, "no second ENTERED for cart-holders");
        assert_eq!(
            (out[1].segment_id.as_str(), out[1].direction),
            ("big-cart", Direction::Entered)
        );
        let mut checkout = add("c", 3_000, 0.0);
        checkout.kind = EventType::CompleteCheckout;
        checkout.order_id = Some("o1".into());
        core.process("k1", &mut p, &checkout, src(), &mut out);
        let exits: Vec<_> = out[2..]
            .iter()
            .map(|c| (c.segment_id.as_str(), c.direction))
            .collect();
        assert_eq!(
            exits,
            vec![
                ("cart-holders", Direction::Exited),
                ("big-cart", Direction::Exited)
            ]
        );
        assert_eq!(out[2].cause.event_type.as_deref(), Some("completeCheckout"));

        // Same input, fresh state: the same ids.
        let mut again = Vec::new();
        let mut p2 = Profile::default();
        for e in [add("a", 1_000, 1.0), add("b", 2_000, 1.0), checkout] {
            core.process("k1", &mut p2, &e, src(), &mut again);
        }
        let ids = |v: &[AudienceChange]| v.iter().map(|c| c.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&out), ids(&again));
        assert_eq!(out[0].id.len(), 32);
        assert_ne!(out[0].id, out[2].id);
    }
}
