//! librdkafka's log lines, routed into `tracing` (shared by the worker's clients and the HTTP
//! API's producer).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::ClientContext;
use tracing::{debug, error, info, warn};

/// At most one line per librdkafka facility and level every this long; the rest are counted and
/// reported with the next line. With the broker down librdkafka reports every reconnect attempt.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// (facility, level) → (last line logged, lines held back since).
type LogLines = HashMap<(String, u8), (Instant, u64)>;

static LOG_LIMITER: Mutex<Option<LogLines>> = Mutex::new(None);

/// Whether a line of this facility may be logged now, and how many were held back since.
fn may_log(fac: &str, level: u8) -> Option<u64> {
    let mut guard = LOG_LIMITER.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    match map.get_mut(&(fac.to_owned(), level)) {
        Some((last, held)) if now.duration_since(*last) < LOG_EVERY => {
            *held += 1;
            None
        }
        Some((last, held)) => {
            *last = now;
            Some(std::mem::take(held))
        }
        None => {
            map.insert((fac.to_owned(), level), (now, 0));
            Some(0)
        }
    }
}

/// Routes librdkafka's log lines into `tracing`. librdkafka retries what it reports as errors
/// (a broker down, a connection refused): those are warnings here, rate-limited per facility.
/// ERROR is kept for the worker's own decision to stop.
pub fn forward_log(level: RDKafkaLogLevel, fac: &str, message: &str) {
    // The [kafka] table goes to the consumer and the producer alike; each warns about the
    // other's properties. That is expected, not a problem to report.
    let level = if fac == "CONFWARN" {
        RDKafkaLogLevel::Debug
    } else {
        level
    };
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error
        | RDKafkaLogLevel::Warning => {
            if let Some(held) = may_log(fac, level as u8) {
                if held > 0 {
                    warn!(
                        facility = fac,
                        similar_lines_held_back = held,
                        "librdkafka: {message}"
                    );
                } else {
                    warn!(facility = fac, "librdkafka: {message}");
                }
            }
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            info!(facility = fac, "librdkafka: {message}")
        }
        RDKafkaLogLevel::Debug => debug!(facility = fac, "librdkafka: {message}"),
    }
}

/// Routes librdkafka's global errors (rdkafka logs them at ERROR by default). librdkafka
/// retries them (all brokers down, a transport failure): WARN, at most one line per error code
/// every 30 s. A fatal error (the idempotent producer cannot go on) is ERROR: the worker stops
/// at its next produce.
pub fn forward_error(e: KafkaError, reason: &str) {
    let code = e.rdkafka_error_code();
    if code == Some(RDKafkaErrorCode::Fatal) {
        error!("librdkafka: fatal error: {e}: {reason}");
        return;
    }
    let fac = format!("error:{code:?}");
    if let Some(held) = may_log(&fac, 255) {
        if held > 0 {
            warn!(similar_lines_held_back = held, "librdkafka: {e}: {reason}");
        } else {
            warn!("librdkafka: {e}: {reason}");
        }
    }
}

/// Producer callbacks: logs and errors only.
pub struct ProducerLogs;

impl ClientContext for ProducerLogs {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        forward_log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        forward_error(error, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_library_lines_are_held_back_and_counted() {
        let fac = "TEST-LIMITER";
        assert_eq!(may_log(fac, 3), Some(0));
        assert_eq!(may_log(fac, 3), None);
        assert_eq!(may_log(fac, 3), None);
        // Another level of the same facility is limited on its own.
        assert_eq!(may_log(fac, 4), Some(0));
    }
}
