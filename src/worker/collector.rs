//! The record collector: every record the worker produces (audience changes, journey triggers,
//! dead letters, repartition messages, deletion tombstones) is queued here, kept within the size
//! the broker accepts, handed to the producer, and its delivery awaited before the commit.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer as _, PurgeConfig};
use tracing::{error, warn};

use crate::codec::{self, encode};
use crate::metrics::Metrics;
use crate::wire::{AudienceChange, DeadLetter, JourneyTrigger};

use super::acks::{Acks, Producer, Round};
use super::error::{Error, Rejection};

/// Header of a repartition message: the record timestamp (ms) of the input message that caused
/// it, for its receiver's event-time order.
pub const EVENT_TIME_HEADER: &str = "tailor.time";
use super::kafka;

/// Most bytes of an input value a dead letter carries (its size and a flag say the rest).
pub const DEAD_LETTER_PAYLOAD_BYTES: usize = 64 * 1024;
/// Most bytes of an input key a dead letter carries.
pub const DEAD_LETTER_KEY_BYTES: usize = 512;
/// Most bytes of a dead letter's human-readable reason.
pub const DEAD_LETTER_DETAIL_BYTES: usize = 1024;
/// What a record's headers, key and framing may add to its value on the wire.
const RECORD_OVERHEAD: usize = 4 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutTopic {
    Audience,
    Journeys,
    DeadLetter,
    Repartition,
}

impl OutTopic {
    fn index(self) -> usize {
        self as usize
    }
}

/// One outgoing record, owned until it is handed to the producer.
struct Outgoing {
    topic: OutTopic,
    key: Vec<u8>,
    /// `None`: a tombstone.
    payload: Option<Vec<u8>>,
    headers: Option<OwnedHeaders>,
    timestamp: Option<i64>,
    /// Explicit partition (repartition messages: the target key's partition).
    partition: Option<i32>,
}

/// Where a dead-lettered message was read.
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
}

pub struct Collector {
    producer: Producer,
    /// The producer's configuration, to create a new one when it cannot go on.
    config: rdkafka::ClientConfig,
    /// Topic names, indexed by [`OutTopic`].
    topics: [String; 4],
    /// Registry ids of the output schemas (audience, journeys, dead letters) when outputs are
    /// Confluent-framed.
    output_ids: Option<[u32; 3]>,
    /// The producer's largest record.
    max_bytes: usize,
    queue: Vec<Outgoing>,
    /// The round of the records handed to the producer since the last commit, and how many.
    round: Round,
    sent: usize,
    metrics: std::sync::Arc<Metrics>,
}

/// Cuts `s` to at most `max` bytes, on a character boundary.
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The dead letter of a rejected message, bounded: at most [`DEAD_LETTER_PAYLOAD_BYTES`] of its
/// value (with its size and a flag), [`DEAD_LETTER_KEY_BYTES`] of its key and
/// [`DEAD_LETTER_DETAIL_BYTES`] of the reason.
pub fn dead_letter_record(source: &Source, rejection: &Rejection) -> DeadLetter {
    let payload = source.payload;
    let truncated = payload.len() > DEAD_LETTER_PAYLOAD_BYTES;
    DeadLetter {
        source_topic: source.topic.to_owned(),
        source_partition: source.partition,
        source_offset: source.offset,
        source_timestamp: source.timestamp,
        reason_code: rejection.code.to_owned(),
        reason: truncate_str(&rejection.detail, DEAD_LETTER_DETAIL_BYTES).to_owned(),
        key: source
            .key
            .map(|k| k[..k.len().min(DEAD_LETTER_KEY_BYTES)].to_vec()),
        payload: payload[..payload.len().min(DEAD_LETTER_PAYLOAD_BYTES)].to_vec(),
        payload_size: Some(payload.len() as i64),
        payload_truncated: truncated,
    }
}

/// The record of a dead letter: the bounded [`DeadLetter`] and the `tailor.*` headers that
/// repeat its facts, keyed like the original.
fn dead_letter_outgoing(source: &Source, rejection: &Rejection) -> Outgoing {
    let record = dead_letter_record(source, rejection);
    let headers = OwnedHeaders::new_with_capacity(6)
        .insert(Header {
            key: "tailor.reason",
            value: Some(rejection.code),
        })
        .insert(Header {
            key: "tailor.detail",
            value: Some(&record.reason),
        })
        .insert(Header {
            key: "tailor.source.topic",
            value: Some(source.topic),
        })
        .insert(Header {
            key: "tailor.source.partition",
            value: Some(&source.partition.to_string()),
        })
        .insert(Header {
            key: "tailor.source.offset",
            value: Some(&source.offset.to_string()),
        })
        .insert(Header {
            key: "tailor.payload.size",
            value: Some(&source.payload.len().to_string()),
        });
    let payload = encode::dead_letter(&record).expect("DeadLetter matches avro/dead_letter.avsc");
    Outgoing {
        topic: OutTopic::DeadLetter,
        key: record.key.unwrap_or_default(),
        payload: Some(payload),
        headers: Some(headers),
        timestamp: None,
        partition: None,
    }
}

impl Collector {
    pub fn new(
        config: rdkafka::ClientConfig,
        topics: [String; 4],
        output_ids: Option<[u32; 3]>,
        max_bytes: usize,
        metrics: std::sync::Arc<Metrics>,
    ) -> Result<Collector, Error> {
        let producer = config
            .create_with_context(Acks::default())
            .map_err(|e| Error::fatal(format!("creating the Kafka producer: {e}")))?;
        Ok(Collector {
            producer,
            config,
            topics,
            output_ids,
            max_bytes,
            queue: Vec::new(),
            round: Round::new(),
            sent: 0,
            metrics,
        })
    }

    /// Replaces the producer with a new instance (the old one is fenced or lost its idempotence
    /// state); what it had in flight is dropped, and the rolled-back batch sends it again.
    pub fn renew_producer(&mut self) -> Result<(), Error> {
        self.discard();
        let fresh: Producer = self
            .config
            .create_with_context(Acks::default())
            .map_err(|e| Error::fatal(format!("creating a new Kafka producer: {e}")))?;
        let old = std::mem::replace(&mut self.producer, fresh);
        // What it still holds fails now, rather than being sent alongside the new producer's
        // (a `kafka::send_now` thread may hold a clone for a while, so the drop below may not
        // be the last one).
        old.purge(PurgeConfig::default().queue().inflight().non_blocking());
        // Dropping waits for librdkafka to close it; not on the async thread.
        tokio::task::spawn_blocking(move || drop(old));
        warn!("the Kafka producer could not go on: replaced by a new one");
        Ok(())
    }

    pub fn audience_change(&mut self, change: AudienceChange) {
        let payload = encode::audience_change(&change)
            .expect("AudienceChange matches avro/audience_change.avsc");
        self.queue.push(Outgoing {
            topic: OutTopic::Audience,
            key: change.profile_key.into_bytes(),
            payload: Some(payload),
            headers: None,
            timestamp: Some(change.event_time),
            partition: None,
        });
    }

    pub fn journey_trigger(&mut self, trigger: JourneyTrigger) {
        let payload = encode::journey_trigger(&trigger)
            .expect("JourneyTrigger matches avro/journey_trigger.avsc");
        self.queue.push(Outgoing {
            topic: OutTopic::Journeys,
            key: trigger.profile_key.into_bytes(),
            payload: Some(payload),
            headers: None,
            timestamp: Some(trigger.triggered_at),
            partition: None,
        });
    }

    /// A message that is bad input: its (bounded) dead letter, keyed like the original.
    pub fn dead_letter(&mut self, source: &Source, rejection: &Rejection) {
        self.queue.push(dead_letter_outgoing(source, rejection));
    }

    /// A message of the identity protocol for the owner of `key`, on `partition`.
    /// `time`: the record timestamp of the message that caused it, which its receiver orders it
    /// by ([`EVENT_TIME_HEADER`]). The record's own timestamp stays the time it is sent:
    /// time-based retention must not delete a replayed event's hop before it is read.
    pub fn internal(&mut self, key: String, partition: i32, payload: Vec<u8>, time: Option<i64>) {
        let headers = time.map(|t| {
            OwnedHeaders::new_with_capacity(1).insert(Header {
                key: EVENT_TIME_HEADER,
                value: Some(t.to_string().as_bytes()),
            })
        });
        self.queue.push(Outgoing {
            topic: OutTopic::Repartition,
            key: key.into_bytes(),
            payload: Some(payload),
            headers,
            timestamp: None,
            partition: Some(partition),
        });
    }

    /// Tombstones for a deleted profile's key on the audience and journey topics.
    pub fn tombstones(&mut self, key: &str, at: i64) {
        for topic in [OutTopic::Audience, OutTopic::Journeys] {
            self.queue.push(Outgoing {
                topic,
                key: key.as_bytes().to_vec(),
                payload: None,
                headers: Some(OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: "tailor.tombstone",
                    value: Some("deletion"),
                })),
                timestamp: Some(at),
                partition: None,
            });
        }
    }

    pub fn has_queued(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Hands queued records to the producer, waiting while its queue is full. A record the
    /// producer would refuse as too large cannot be produced by any retry: it is replaced by a
    /// dead letter that says so (the bounds at validation make this a last resort).
    pub async fn send(&mut self) -> Result<(), Error> {
        let queue = std::mem::take(&mut self.queue);
        for mut out in queue {
            let reframed = match (self.output_ids, &out.payload, out.topic) {
                (Some(ids), Some(p), OutTopic::Audience) => Some(codec::to_confluent(p, ids[0])),
                (Some(ids), Some(p), OutTopic::Journeys) => Some(codec::to_confluent(p, ids[1])),
                (Some(ids), Some(p), OutTopic::DeadLetter) => Some(codec::to_confluent(p, ids[2])),
                _ => None,
            };
            if let Some(p) = reframed {
                out.payload = Some(p);
            }
            let size = out.key.len() + out.payload.as_ref().map_or(0, Vec::len);
            if size + RECORD_OVERHEAD > self.max_bytes {
                if out.topic == OutTopic::Repartition {
                    // A message of the identity protocol carries state (a merged profile) or an
                    // event that exists nowhere else: dropping it would lose them.
                    return Err(Error::fatal(format!(
                        "a repartition message of {size} bytes exceeds message.max.bytes ({}): raise it (or lower identity.max_identities)",
                        self.max_bytes
                    )));
                }
                out = self.oversized(out, size);
            }
            let topic = &self.topics[out.topic.index()];
            let mut record =
                BaseRecord::<[u8], [u8], usize>::with_opaque_to(topic, self.round.opaque(0))
                    .key(&out.key[..]);
            if let Some(p) = &out.payload {
                record = record.payload(&p[..]);
            }
            if let Some(h) = out.headers {
                record = record.headers(h);
            }
            if let Some(p) = out.partition {
                record = record.partition(p);
            }
            if let Some(ts) = out.timestamp {
                record = record.timestamp(ts);
            }
            loop {
                match self.producer.send(record) {
                    Ok(()) => {
                        self.sent += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((e, _)) => return Err(kafka::delivery_error(topic, &e)),
                }
            }
        }
        Ok(())
    }

    /// The dead letter standing for an output too large to produce.
    fn oversized(&mut self, out: Outgoing, size: usize) -> Outgoing {
        let topic = self.topics[out.topic.index()].clone();
        self.metrics
            .outputs_oversized
            .with_label_values(&[&topic])
            .inc();
        error!(
            topic,
            bytes = size,
            max = self.max_bytes,
            "an output is larger than the producer accepts; it is dead-lettered instead"
        );
        let payload = out.payload.unwrap_or_default();
        let rejection = Rejection::new(
            "output_too_large",
            format!(
                "a record for {topic} of {size} bytes exceeds message.max.bytes ({})",
                self.max_bytes
            ),
        );
        let source = Source {
            topic: &topic,
            partition: out.partition.unwrap_or(-1),
            offset: -1,
            timestamp: out.timestamp,
            key: Some(&out.key),
            payload: &payload,
        };
        dead_letter_outgoing(&source, &rejection)
    }

    /// The round of the records handed to the producer since the last call, and how many (to
    /// await with [`Acks::acknowledged`]); the next records go in a new round.
    pub fn take_round(&mut self) -> (Round, usize) {
        let taken = (self.round, self.sent);
        self.round = Round::new();
        self.sent = 0;
        taken
    }

    /// Forgets queued records and unawaited deliveries (the batch is rolled back: its messages
    /// are processed again and their outputs sent again, with the same ids).
    pub fn discard(&mut self) {
        self.queue.clear();
        let (round, sent) = self.take_round();
        self.producer.context().abandon(round, sent);
    }

    pub fn producer(&self) -> &Producer {
        &self.producer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::decode;

    /// Regression: a 1,040,000-byte garbage message produced a dead letter larger than the broker
    /// accepts, so the worker stopped at it after every restart.
    #[test]
    fn dead_letters_are_bounded_and_say_what_was_cut() {
        let payload = vec![0xAB; 1_040_000];
        let key = vec![b'k'; 600_000];
        let detail = "é".repeat(5_000);
        let source = Source {
            topic: "storefront",
            partition: 3,
            offset: 42,
            timestamp: Some(1),
            key: Some(&key),
            payload: &payload,
        };
        let dl = dead_letter_record(&source, &Rejection::new("bad_framing", detail));
        let bytes = encode::dead_letter(&dl).unwrap();
        assert!(
            bytes.len() < DEAD_LETTER_PAYLOAD_BYTES + 4 * 1024,
            "{}",
            bytes.len()
        );
        let back = decode::dead_letter(&bytes).unwrap();
        assert_eq!(back.payload, payload[..DEAD_LETTER_PAYLOAD_BYTES]);
        assert_eq!(back.payload_size, Some(1_040_000));
        assert!(back.payload_truncated);
        assert_eq!(back.key.unwrap().len(), DEAD_LETTER_KEY_BYTES);
        assert!(back.reason.len() <= DEAD_LETTER_DETAIL_BYTES);
        assert!(back.reason.chars().all(|c| c == 'é'));

        let small = Source {
            payload: b"{}",
            key: None,
            ..source
        };
        let dl = dead_letter_record(&small, &Rejection::new("bad_json", "x"));
        assert_eq!(
            (dl.payload.as_slice(), dl.payload_size, dl.payload_truncated),
            (&b"{}"[..], Some(2), false)
        );
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate_str("aé", 2), "a");
        assert_eq!(truncate_str("aé", 3), "aé");
        assert_eq!(truncate_str("", 0), "");
    }
}
