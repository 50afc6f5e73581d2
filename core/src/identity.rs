//! Identity stage: which profile an event belongs to, and how the identities of one shopper
//! become one profile. Pure decisions and the internal message format; the worker moves the
//! messages and the state.
//!
//! ## Identities and keys
//!
//! A shopper is known by ECIDs (anonymous, one per browser), e-mail addresses (lower-cased) and
//! at most one customer id. A profile is stored under one *profile key*, the message key of the
//! event that created it, and has a [`KeyKind`]: the kind of identity that key is. Kinds rank
//! `ecid < email < customer < key` (`key`: a producer's own shopper key, not one of the three).
//!
//! Every identity value is either a profile key, an *alias* of exactly one profile key (stored
//! on the partition its own events arrive at), or unknown. Never two: that is what keeps the
//! identity graph from exploding.
//!
//! ## The protocol (internal repartition topic, keyed by the target identity)
//!
//! All partitions are numbered alike across the input topics and `tailor.repartition`, and the
//! partition of a key is [`partition_for`] (Kafka's default partitioner, murmur2), so the owner
//! of a key's input partition also owns its repartition partition. Each message below is
//! handled by the owner of its target, which commits its effect together with its input offsets
//! (exactly-once state), and the messages it sends are delivered before that commit (nothing
//! lost). Messages can arrive twice after a crash of their sender: profiles remember, per
//! sending partition, the highest position applied ([`Internal::via`]) and skip the rest; and
//! the input positions of the last 64 events forwarded to them, which catches a repeat that took
//! another path (through an alias created in between).
//!
//! 1. **Event.** An event arrives on partition `p` keyed `k`. If `k` belongs on another partition
//!    (a producer with another partitioner) or `k` is an alias of `o`, the event is forwarded as
//!    [`Message::Event`] to `k`'s partition or to `o`. Otherwise it is handled at profile `k`.
//! 2. **Link.** At profile `t` (kind `kt`), the event's identities of a higher kind than `kt` name
//!    a survivor `s` (the highest). Then `t` is absorbed: its memberships EXIT (cause `merge`),
//!    its profile is deleted, `t` becomes an alias of `s`, and [`Message::Merge`] carries the
//!    profile and the event to `s`. There the two profiles are merged, the event applied and
//!    every segment evaluated once: ENTERs/EXITs of the survivor, each once.
//!    Otherwise `t` survives: the event's other identities are linked to it (up to the
//!    configured limit) and each is told with [`Message::Claim`].
//! 3. **Claim** of identity `x` by `s`: unknown `x` becomes an alias of `s`. An `x` with a profile
//!    of a lower kind is absorbed as in 2 (its profile goes to `s` in a `Merge`). An ECID alias of
//!    another profile is re-pointed (a shared browser signs in as someone else: the browser's
//!    later events go to the new shopper; the two known profiles are never merged). Anything
//!    else (an e-mail or customer id already someone else's) is refused and counted.
//! 4. **Forget** `x` (sent for each identity of a deleted profile): the alias goes.
//! 5. **Delete** (the admin endpoint): at an alias, forwarded to the profile; at a profile, as
//!    `accountDeleted`: EXITs with cause `deletion`, profile, timer and aliases removed,
//!    tombstones on the output topics for each of its keys.

use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::profile::Profile;

/// The kind of identity a profile key is; the order is the survivor's rank.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum KeyKind {
    #[default]
    Ecid,
    Email,
    Customer,
    /// A producer's own shopper key, not one of the event's identities.
    Key,
}

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::Ecid => "ecid",
            KeyKind::Email => "email",
            KeyKind::Customer => "customer",
            KeyKind::Key => "key",
        }
    }
}

/// One identity value and its kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id {
    pub kind: KeyKind,
    pub value: String,
}

/// The event's identities, highest kind first.
pub fn event_ids(ev: &Event) -> Vec<Id> {
    let i = &ev.identity;
    [
        (KeyKind::Customer, &i.customer_id),
        (KeyKind::Email, &i.email),
        (KeyKind::Ecid, &i.ecid),
    ]
    .into_iter()
    .filter_map(|(kind, v)| {
        v.as_ref().map(|v| Id {
            kind,
            value: v.clone(),
        })
    })
    .collect()
}

/// The kind of a message key, judged by the identities of the event it came with.
pub fn kind_of(key: &str, ev: &Event) -> KeyKind {
    event_ids(ev)
        .into_iter()
        .find(|id| id.value == key)
        .map_or(KeyKind::Key, |id| id.kind)
}

/// What to do with an event at profile `key`.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// The profile is absorbed by this higher-ranked identity; the event goes with it.
    Absorb(Id),
    /// The profile takes the event.
    Survive,
}

/// Decides absorb or survive for an event at the profile stored under `key`, of kind `kind`.
pub fn plan(key: &str, kind: KeyKind, ev: &Event) -> Plan {
    match event_ids(ev).into_iter().next() {
        Some(best) if best.kind > kind && best.value != key => Plan::Absorb(best),
        _ => Plan::Survive,
    }
}

/// Why a link was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The profile holds the configured most identities.
    Limit,
    /// The identity belongs to another known shopper (a second customer id, an e-mail owned
    /// elsewhere).
    Conflict,
}

impl Refused {
    /// The `result` the worker counts it under in `tailor_identity_links_total`.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Limit => "refused_limit",
            Refused::Conflict => "refused_conflict",
        }
    }
}

/// How many identities a profile holds.
pub fn count(p: &Profile) -> usize {
    p.identities.ecids.len() + p.identities.emails.len() + p.identities.customer_id.iter().count()
}

/// Whether the profile lists this identity.
pub fn holds(p: &Profile, id: &Id) -> bool {
    holds_value(p, id.kind, &id.value)
}

/// Whether the profile lists `value` as an identity of `kind` (no allocation: the hot path).
pub fn holds_value(p: &Profile, kind: KeyKind, value: &str) -> bool {
    let i = &p.identities;
    match kind {
        KeyKind::Ecid => i.ecids.holds(value),
        KeyKind::Email => i.emails.iter().any(|e| e == value),
        KeyKind::Customer => i.customer_id.as_deref() == Some(value),
        KeyKind::Key => i.key.as_deref() == Some(value),
    }
}

/// Links `id` to the profile if it may: not over `limit` identities, and at most one customer
/// id. Returns whether it is new (`Ok(true)`: the identity must be told with a claim).
pub fn link(p: &mut Profile, id: &Id, limit: usize) -> Result<bool, Refused> {
    if holds(p, id) {
        return Ok(false);
    }
    link_new(p, id.kind, &id.value, limit).map(|()| true)
}

/// [`link`] for `value`, an identity of `kind` the profile does not hold (the caller asked
/// [`holds_value`]): not asked again, and the value copied only when it is linked. A shopper
/// at the limit (a shared device's profile, a bot) refuses a link on most of its events.
pub fn link_new(p: &mut Profile, kind: KeyKind, value: &str, limit: usize) -> Result<(), Refused> {
    debug_assert!(!holds_value(p, kind, value), "link_new: already held");
    if kind == KeyKind::Customer && p.identities.customer_id.is_some() {
        return Err(Refused::Conflict);
    }
    if kind == KeyKind::Key && p.identities.key.is_some() {
        return Err(Refused::Conflict);
    }
    if count(p) >= limit {
        return Err(Refused::Limit);
    }
    let i = &mut p.identities;
    let value = value.to_owned();
    match kind {
        KeyKind::Ecid => i.ecids.push(value),
        KeyKind::Email => {
            crate::profile::room_for_one(&mut i.emails);
            i.emails.push(value)
        }
        KeyKind::Customer => i.customer_id = Some(value),
        KeyKind::Key => i.key = Some(value),
    }
    Ok(())
}

/// Every identity the profile holds (its own key included).
pub fn all_ids(p: &Profile) -> Vec<Id> {
    let i = &p.identities;
    let mut out: Vec<Id> = Vec::new();
    let mut push = |kind, v: &String| {
        out.push(Id {
            kind,
            value: v.clone(),
        })
    };
    if let Some(k) = &i.key {
        push(KeyKind::Key, k);
    }
    if let Some(c) = &i.customer_id {
        push(KeyKind::Customer, c);
    }
    for e in &i.emails {
        push(KeyKind::Email, e);
    }
    for e in &i.ecids {
        push(KeyKind::Ecid, e);
    }
    out
}

/// What a partition holds for an identity value.
#[derive(Debug, Clone, PartialEq)]
pub enum Local {
    Unknown,
    Alias(String),
    Profile(KeyKind),
}

/// The answer to a claim of identity `id` (held here as `local`) by profile `owner` of `owner_kind`.
#[derive(Debug, Clone, PartialEq)]
pub enum ClaimOutcome {
    /// Record the alias.
    Link,
    /// Already an alias of the owner.
    Already,
    /// An ECID alias moves to the new owner.
    Repoint,
    /// The profile here is absorbed by the owner.
    Absorb,
    Refuse,
}

pub fn on_claim(id: &Id, local: &Local, owner: &str, owner_kind: KeyKind) -> ClaimOutcome {
    match local {
        Local::Unknown => ClaimOutcome::Link,
        Local::Alias(o) if o == owner => ClaimOutcome::Already,
        Local::Alias(_) if id.kind == KeyKind::Ecid => ClaimOutcome::Repoint,
        Local::Alias(_) => ClaimOutcome::Refuse,
        Local::Profile(k) if *k < owner_kind => ClaimOutcome::Absorb,
        Local::Profile(_) => ClaimOutcome::Refuse,
    }
}

/// Where an event for profile key `key`, read or forwarded to partition `here`, goes: step 1 of
/// the protocol, decided from what this partition holds (`local`, asked only when the key is at
/// home here).
#[derive(Debug, Clone, PartialEq)]
pub enum EventRoute {
    /// The key belongs to another partition: forward the event to it (keyed by `key`).
    Forward(String),
    /// The key is an alias here: forward the event to the owning profile.
    ToOwner(String),
    /// `accountDeleted` for a key nothing is held under: the shopper may be known by the event's
    /// other identities (a profile record keyed by customer id, a profile keyed by e-mail); ask
    /// each of them to delete.
    DeleteElsewhere(Vec<String>),
    /// `accountDeleted` for a profile held here.
    Delete,
    /// Apply the event to the profile here (creating it if new).
    Apply,
}

pub fn route_event<E>(
    key: &str,
    here: i32,
    partitions: i32,
    ev: &Event,
    local: impl FnOnce() -> Result<Local, E>,
) -> Result<EventRoute, E> {
    if partition_for(key.as_bytes(), partitions) != here {
        return Ok(EventRoute::Forward(key.to_owned()));
    }
    let deletion = ev.kind == crate::event::EventType::AccountDeleted;
    Ok(match local()? {
        Local::Alias(owner) => EventRoute::ToOwner(owner),
        Local::Unknown if deletion => EventRoute::DeleteElsewhere(
            event_ids(ev)
                .into_iter()
                .filter(|id| id.value != key)
                .map(|id| id.value)
                .collect(),
        ),
        _ if deletion => EventRoute::Delete,
        _ => EventRoute::Apply,
    })
}

/// What a `Merge` addressed to an identity held here as `local` does.
#[derive(Debug, Clone, PartialEq)]
pub enum MergeRoute {
    /// The survivor was itself absorbed since: the merge goes on to its owner.
    ToOwner(String),
    /// The profile here (new or existing) takes the absorbed profile.
    Take,
}

pub fn on_merge(local: &Local) -> MergeRoute {
    match local {
        Local::Alias(owner) => MergeRoute::ToOwner(owner.clone()),
        _ => MergeRoute::Take,
    }
}

/// Whether a `Forget` from profile `owner` removes the alias held here as `local` (only an alias
/// that still points at that owner: a repointed one stays).
pub fn on_forget(local: &Local, owner: &str) -> bool {
    matches!(local, Local::Alias(o) if o == owner)
}

/// What a `Delete` addressed to an identity held here as `local` does.
#[derive(Debug, Clone, PartialEq)]
pub enum DeleteRoute {
    /// Remove the alias and pass the deletion on to its owner.
    Unalias(String),
    /// Delete the profile held here.
    Profile,
    /// Nothing is held: nothing to do.
    Nothing,
}

pub fn on_delete(local: &Local) -> DeleteRoute {
    match local {
        Local::Alias(owner) => DeleteRoute::Unalias(owner.clone()),
        Local::Profile(_) => DeleteRoute::Profile,
        Local::Unknown => DeleteRoute::Nothing,
    }
}

/// Kafka's default partitioner for keyed records (murmur2 of the key bytes, as the Java client
/// and librdkafka's `murmur2_random`): the partition the platform's producers put `key` in.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    ((murmur2(key) & 0x7fff_ffff) % partitions.max(1) as u32) as i32
}

fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h = SEED ^ len as u32;
    let chunks = data.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    match tail.len() {
        3 => {
            h ^= (tail[2] as u32) << 16;
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        2 => {
            h ^= (tail[1] as u32) << 8;
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        1 => {
            h ^= tail[0] as u32;
            h = h.wrapping_mul(M);
        }
        _ => {}
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// Where a message was read: the input or repartition position it came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// An input event as it arrived (decoded again by its handler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RawEvent {
    /// `storefront`, `backoffice` or `profile`.
    pub family: u8,
    pub payload: Vec<u8>,
    /// Where the event was first read (the cause of its outputs).
    pub origin: Position,
}

/// One message on the repartition topic, keyed by `target`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Internal {
    pub target: String,
    /// The position whose processing sent this message (duplicate detection).
    pub via: Position,
    pub message: Message,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Message {
    Event(RawEvent),
    Merge {
        /// The absorbed profile's key and its encoded state.
        from: String,
        profile: Option<Vec<u8>>,
        /// The survivor's kind, for a survivor that has no profile yet.
        kind: KeyKind,
        /// The event that linked them, applied after the merge.
        event: Option<RawEvent>,
    },
    Claim {
        kind: KeyKind,
        owner: String,
        owner_kind: KeyKind,
    },
    Forget {
        owner: String,
    },
    Delete {
        /// `admin` (the HTTP endpoint) or `account_deleted` (an event naming this identity).
        source: String,
        requested_at: i64,
    },
}

impl Message {
    pub fn name(&self) -> &'static str {
        match self {
            Message::Event(_) => "event",
            Message::Merge { .. } => "merge",
            Message::Claim { .. } => "claim",
            Message::Forget { .. } => "forget",
            Message::Delete { .. } => "delete",
        }
    }
}

/// Format version of repartition messages.
const INTERNAL_VERSION: u8 = 1;

pub fn encode(m: &Internal) -> Vec<u8> {
    let mut out = vec![INTERNAL_VERSION];
    out.extend(postcard::to_stdvec(m).expect("internal message serialises"));
    out
}

pub fn decode(bytes: &[u8]) -> Result<Internal, String> {
    match bytes.split_first() {
        Some((&INTERNAL_VERSION, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("unknown repartition message version {v}")),
        None => Err("empty repartition message".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::EventType;
    use crate::wire::Identity;

    fn ev(ecid: Option<&str>, email: Option<&str>, customer: Option<&str>) -> Event {
        let identity = Identity {
            ecid: ecid.map(Into::into),
            email: email.map(Into::into),
            customer_id: customer.map(Into::into),
        };
        Event::base("e".into(), EventType::SignIn, 1_700_000_000_000, identity)
    }

    /// The first partition (of `n`) whose own key `key` is.
    fn home(key: &str, n: i32) -> i32 {
        partition_for(key.as_bytes(), n)
    }

    #[test]
    fn an_event_goes_where_its_key_lives_and_local_state_is_asked_only_there() {
        let e = ev(Some("e1"), None, None);
        let here = home("e1", 8);
        let elsewhere = (here + 1) % 8;
        let asked = std::cell::Cell::new(false);
        let route = route_event("e1", elsewhere, 8, &e, || {
            asked.set(true);
            Ok::<_, ()>(Local::Unknown)
        });
        assert_eq!(route, Ok(EventRoute::Forward("e1".into())));
        assert!(
            !asked.get(),
            "another partition's key must not be looked up here"
        );
        let at = |local: Local| route_event("e1", here, 8, &e, || Ok::<_, ()>(local)).unwrap();
        assert_eq!(at(Local::Unknown), EventRoute::Apply);
        assert_eq!(at(Local::Profile(KeyKind::Ecid)), EventRoute::Apply);
        assert_eq!(
            at(Local::Alias("ann@x.com".into())),
            EventRoute::ToOwner("ann@x.com".into())
        );
        // A failure to read local state is passed on, not turned into a decision.
        assert_eq!(route_event("e1", here, 8, &e, || Err("disk")), Err("disk"));
    }

    #[test]
    fn an_account_deletion_deletes_here_or_asks_the_events_other_identities() {
        let mut del = ev(Some("e1"), Some("ann@x.com"), Some("c-7"));
        del.kind = EventType::AccountDeleted;
        let here = home("c-7", 4);
        let at = |local: Local| route_event("c-7", here, 4, &del, || Ok::<_, ()>(local)).unwrap();
        assert_eq!(at(Local::Profile(KeyKind::Customer)), EventRoute::Delete);
        assert_eq!(
            at(Local::Unknown),
            EventRoute::DeleteElsewhere(vec!["ann@x.com".into(), "e1".into()])
        );
        // An alias: the owner decides (the deletion is forwarded like any event).
        assert_eq!(
            at(Local::Alias("ann@x.com".into())),
            EventRoute::ToOwner("ann@x.com".into())
        );
    }

    #[test]
    fn merges_follow_aliases_forgets_only_remove_their_own_alias_deletes_walk_to_the_owner() {
        assert_eq!(
            on_merge(&Local::Alias("b".into())),
            MergeRoute::ToOwner("b".into())
        );
        assert_eq!(on_merge(&Local::Unknown), MergeRoute::Take);
        assert_eq!(on_merge(&Local::Profile(KeyKind::Email)), MergeRoute::Take);

        assert!(on_forget(&Local::Alias("a".into()), "a"));
        assert!(
            !on_forget(&Local::Alias("b".into()), "a"),
            "repointed since"
        );
        assert!(!on_forget(&Local::Profile(KeyKind::Ecid), "a"));
        assert!(!on_forget(&Local::Unknown, "a"));

        assert_eq!(
            on_delete(&Local::Alias("a".into())),
            DeleteRoute::Unalias("a".into())
        );
        assert_eq!(
            on_delete(&Local::Profile(KeyKind::Key)),
            DeleteRoute::Profile
        );
        assert_eq!(on_delete(&Local::Unknown), DeleteRoute::Nothing);
    }

    #[test]
    fn murmur2_matches_kafkas_default_partitioner() {
        // Values from Kafka's own tests of Utils.murmur2 (DefaultPartitionerTest / UtilsTest).
        assert_eq!(murmur2(b"21") as i32, -973932308);
        assert_eq!(murmur2(b"foobar") as i32, -790332482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985981536);
        assert_eq!(murmur2(b"a-little-bit-longer-string") as i32, -1486304829);
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58897971
        );
        assert_eq!(murmur2(b"abc") as i32, 479470107);
        for p in 1..8 {
            assert!((0..p).contains(&partition_for(b"ecid-1", p)));
        }
    }

    #[test]
    fn anonymous_profiles_are_absorbed_by_known_identities_never_the_reverse() {
        let sign_in = ev(Some("e1"), Some("ann@x.com"), None);
        assert_eq!(kind_of("e1", &sign_in), KeyKind::Ecid);
        assert_eq!(
            plan("e1", KeyKind::Ecid, &sign_in),
            Plan::Absorb(Id {
                kind: KeyKind::Email,
                value: "ann@x.com".into()
            })
        );
        assert_eq!(plan("ann@x.com", KeyKind::Email, &sign_in), Plan::Survive);
        let record = ev(None, Some("ann@x.com"), Some("c1"));
        assert_eq!(
            plan("ann@x.com", KeyKind::Email, &record),
            Plan::Absorb(Id {
                kind: KeyKind::Customer,
                value: "c1".into()
            })
        );
        assert_eq!(plan("c1", KeyKind::Customer, &record), Plan::Survive);
        assert_eq!(plan("shopper-7", KeyKind::Key, &record), Plan::Survive);
        assert_eq!(kind_of("shopper-7", &record), KeyKind::Key);
        assert_eq!(
            plan("e1", KeyKind::Ecid, &ev(Some("e1"), None, None)),
            Plan::Survive
        );
    }

    #[test]
    fn links_are_bounded_and_a_second_customer_id_is_a_conflict() {
        let mut p = Profile::default();
        let id = |kind, v: &str| Id {
            kind,
            value: v.into(),
        };
        assert_eq!(link(&mut p, &id(KeyKind::Customer, "c1"), 3), Ok(true));
        assert_eq!(link(&mut p, &id(KeyKind::Customer, "c1"), 3), Ok(false));
        assert_eq!(
            link(&mut p, &id(KeyKind::Customer, "c2"), 3),
            Err(Refused::Conflict)
        );
        assert_eq!(link(&mut p, &id(KeyKind::Ecid, "e1"), 3), Ok(true));
        assert_eq!(link(&mut p, &id(KeyKind::Email, "a@x"), 3), Ok(true));
        assert_eq!(
            link(&mut p, &id(KeyKind::Ecid, "e2"), 3),
            Err(Refused::Limit)
        );
        assert_eq!(count(&p), 3);
        assert_eq!(all_ids(&p).len(), 3);
    }

    #[test]
    fn claims_link_absorb_repoint_or_refuse() {
        let ecid = Id {
            kind: KeyKind::Ecid,
            value: "e1".into(),
        };
        let email = Id {
            kind: KeyKind::Email,
            value: "a@x".into(),
        };
        use ClaimOutcome::*;
        assert_eq!(
            on_claim(&ecid, &Local::Unknown, "c1", KeyKind::Customer),
            Link
        );
        assert_eq!(
            on_claim(&ecid, &Local::Alias("c1".into()), "c1", KeyKind::Customer),
            Already
        );
        assert_eq!(
            on_claim(&ecid, &Local::Alias("c0".into()), "c1", KeyKind::Customer),
            Repoint
        );
        assert_eq!(
            on_claim(&email, &Local::Alias("c0".into()), "c1", KeyKind::Customer),
            Refuse
        );
        assert_eq!(
            on_claim(
                &email,
                &Local::Profile(KeyKind::Email),
                "c1",
                KeyKind::Customer
            ),
            Absorb
        );
        assert_eq!(
            on_claim(
                &email,
                &Local::Profile(KeyKind::Email),
                "b@x",
                KeyKind::Email
            ),
            Refuse
        );
    }

    #[test]
    fn internal_messages_round_trip() {
        let m = Internal {
            target: "c1".into(),
            via: Position {
                topic: "commerce.storefront".into(),
                partition: 3,
                offset: 42,
            },
            message: Message::Claim {
                kind: KeyKind::Ecid,
                owner: "c1".into(),
                owner_kind: KeyKind::Customer,
            },
        };
        assert_eq!(decode(&encode(&m)).unwrap(), m);
        assert!(decode(&[9, 1]).unwrap_err().contains("version 9"));
    }
}
