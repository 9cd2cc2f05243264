//! The delivery rules every messaging backend follows, in one place:
//! how many attempts, how long to wait between them, and what a message
//! becomes after the last one (a copy on `<topic>.deadletter` with
//! metadata saying why). The embedded dispatcher and the Redis consumer
//! apply them themselves; on Dapr, daprd applies its own resiliency
//! policy and dead-letters to the same topic name (see
//! `docs/dapr-reference.md`).

use super::BrokerMessage;
use std::time::Duration;

/// Suffix of the topic a message moves to after its last failed attempt.
pub const DEAD_LETTER_SUFFIX: &str = ".deadletter";

/// Attempts when the runtime config sets none.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// First backoff when the runtime config sets none, in milliseconds.
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 200;
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How long a delivery that found no free instance waits before it is
/// tried again; such a delivery is not counted as an attempt.
pub const CAPACITY_RETRY: Duration = Duration::from_millis(500);

/// Dead letters kept per dead-letter topic when
/// `WASMSHOP_DEAD_LETTER_MAX_COUNT` is not set.
pub const DEFAULT_DEAD_LETTER_MAX_COUNT: u64 = 10_000;
/// How long dead letters are kept when `WASMSHOP_DEAD_LETTER_MAX_AGE_SECS`
/// is not set: 14 days.
pub const DEFAULT_DEAD_LETTER_MAX_AGE: Duration = Duration::from_secs(14 * 24 * 3600);

/// How many dead letters a topic keeps and for how long; the oldest go
/// first when either bound is passed (docs/messaging.md, "What is stored").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterRetention {
    /// Dead letters kept per `<topic>.deadletter` (at least 1).
    pub max_count: u64,
    /// The oldest dead letter kept.
    pub max_age: Duration,
}

impl Default for DeadLetterRetention {
    fn default() -> Self {
        DeadLetterRetention {
            max_count: DEFAULT_DEAD_LETTER_MAX_COUNT,
            max_age: DEFAULT_DEAD_LETTER_MAX_AGE,
        }
    }
}

impl DeadLetterRetention {
    /// The retention from `WASMSHOP_DEAD_LETTER_MAX_COUNT` and
    /// `WASMSHOP_DEAD_LETTER_MAX_AGE_SECS` (positive integers), or the
    /// defaults; `Err` names the variable that is wrong and what to write.
    pub fn from_env() -> Result<Self, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Self::from_env`] over any variable source.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let read = |name: &str, max: u64| -> Result<Option<u64>, String> {
            match var(name) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<u64>() {
                    Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
                    _ => Err(format!(
                        "{name}='{v}' is not a whole number from 1 to {max}; set it to a positive number or unset it for the default"
                    )),
                },
            }
        };
        let mut r = DeadLetterRetention::default();
        if let Some(n) = read("WASMSHOP_DEAD_LETTER_MAX_COUNT", 1 << 40)? {
            r.max_count = n;
        }
        if let Some(n) = read("WASMSHOP_DEAD_LETTER_MAX_AGE_SECS", 100 * 365 * 24 * 3600)? {
            r.max_age = Duration::from_secs(n);
        }
        Ok(r)
    }

    /// The process's retention, read once; a bad variable is logged and
    /// the default used (start-up checks it first: [`Self::from_env`]).
    pub fn current() -> Self {
        static CURRENT: std::sync::OnceLock<DeadLetterRetention> = std::sync::OnceLock::new();
        *CURRENT.get_or_init(|| {
            Self::from_env().unwrap_or_else(|e| {
                tracing::error!(error = %e, "dead-letter retention: using the defaults");
                DeadLetterRetention::default()
            })
        })
    }
}

/// serde default of a messaging client's `max_attempts`.
pub fn default_max_attempts() -> u32 {
    DEFAULT_MAX_ATTEMPTS
}

/// serde default of a messaging client's `initial_backoff_ms`.
pub fn default_initial_backoff_ms() -> u64 {
    DEFAULT_INITIAL_BACKOFF_MS
}

/// How often and how patiently a message is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    /// Deliveries before the message is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled after each failure, capped
    /// at [`MAX_BACKOFF`].
    pub initial_backoff: Duration,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            initial_backoff: Duration::from_millis(DEFAULT_INITIAL_BACKOFF_MS),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterFailure {
    /// Try again after this long.
    RetryIn(Duration),
    /// That was the last attempt: dead-letter the message.
    DeadLetter,
}

impl DeliveryPolicy {
    /// A policy from the runtime config's `max_attempts` and
    /// `initial_backoff_ms`.
    pub fn new(max_attempts: u32, initial_backoff_ms: u64) -> Self {
        DeliveryPolicy {
            max_attempts,
            initial_backoff: Duration::from_millis(initial_backoff_ms),
        }
    }

    /// Backoff before attempt `attempt + 1`, after `attempt` failures.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let ms = (self.initial_backoff.as_millis() as u64)
            .saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
        Duration::from_millis(ms).min(MAX_BACKOFF)
    }

    /// Decides after attempt number `attempts` (1 for the first) failed
    /// with `error`, and logs the decision.
    pub fn after_failure(
        &self,
        subscriber: &str,
        topic: &str,
        attempts: u32,
        error: &str,
    ) -> AfterFailure {
        let max_attempts = self.max_attempts.max(1);
        if attempts < max_attempts {
            tracing::warn!(
                subscriber,
                topic,
                attempt = attempts,
                max_attempts,
                error,
                "delivery failed; will retry"
            );
            AfterFailure::RetryIn(self.backoff(attempts))
        } else {
            tracing::error!(
                subscriber,
                topic,
                attempts,
                error,
                "delivery failed for the last time; moving the message to {topic}{DEAD_LETTER_SUFFIX}"
            );
            AfterFailure::DeadLetter
        }
    }
}

/// The dead-letter topic of `topic`; `None` for a dead-letter topic itself,
/// whose failed messages are kept as they are, without further deliveries.
pub fn dead_letter_topic(topic: &str) -> Option<String> {
    (!topic.ends_with(DEAD_LETTER_SUFFIX)).then(|| format!("{topic}{DEAD_LETTER_SUFFIX}"))
}

/// The copy of `message` that goes to the dead-letter topic: the original
/// topic, the subscriber that failed, how many attempts it had and the
/// last error, as `deadletter-*` metadata.
pub fn dead_letter(
    message: &BrokerMessage,
    topic: &str,
    subscriber: &str,
    attempts: u32,
    reason: &str,
) -> BrokerMessage {
    let mut message = message.clone();
    message.metadata.extend([
        ("deadletter-original-topic".to_string(), topic.to_string()),
        ("deadletter-subscriber".to_string(), subscriber.to_string()),
        ("deadletter-attempts".to_string(), attempts.to_string()),
        ("deadletter-reason".to_string(), reason.to_string()),
    ]);
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = DeliveryPolicy::new(3, 100);
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(3), Duration::from_millis(400));
        assert_eq!(p.backoff(40), MAX_BACKOFF);
    }

    #[test]
    fn the_last_attempt_dead_letters() {
        let p = DeliveryPolicy::new(2, 100);
        assert_eq!(
            p.after_failure("s", "t", 1, "e"),
            AfterFailure::RetryIn(Duration::from_millis(100))
        );
        assert_eq!(p.after_failure("s", "t", 2, "e"), AfterFailure::DeadLetter);
    }

    #[test]
    fn dead_letter_retention_reads_its_variables() {
        let vars = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(
            DeadLetterRetention::from_vars(vars(&[])).unwrap(),
            DeadLetterRetention::default()
        );
        let r = DeadLetterRetention::from_vars(vars(&[
            ("WASMSHOP_DEAD_LETTER_MAX_COUNT", "5"),
            ("WASMSHOP_DEAD_LETTER_MAX_AGE_SECS", "60"),
        ]))
        .unwrap();
        assert_eq!((r.max_count, r.max_age), (5, Duration::from_secs(60)));
        let e = DeadLetterRetention::from_vars(vars(&[("WASMSHOP_DEAD_LETTER_MAX_COUNT", "0")]))
            .unwrap_err();
        assert!(e.contains("WASMSHOP_DEAD_LETTER_MAX_COUNT='0'"), "{e}");
    }

    #[test]
    fn dead_letters_of_dead_letters_stay() {
        assert_eq!(dead_letter_topic("a").as_deref(), Some("a.deadletter"));
        assert_eq!(dead_letter_topic("a.deadletter"), None);
        let m = dead_letter(&BrokerMessage::default(), "a", "s", 3, "boom");
        assert!(
            m.metadata
                .contains(&("deadletter-attempts".into(), "3".into()))
        );
    }
}
