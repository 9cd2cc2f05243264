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
