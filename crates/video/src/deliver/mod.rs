//! Events leave the service (docs/plans/video.md §7) by webhooks, through the `deliveries`
//! outbox in `video.sqlite` so that retries survive restarts ([`webhook`]), and by MQTT,
//! best effort through a bounded queue ([`mqtt`]). Neither ever makes a stream wait: the
//! pipeline only writes a row or pushes on a queue, and tokio tasks do the rest.

pub mod mqtt;
pub mod webhook;

#[cfg(test)]
mod tests;

use std::time::Duration;

pub use mqtt::{MqttStatus, Publisher, PublisherOptions};
pub use webhook::SenderOptions;

/// How events are delivered: the webhooks' and the broker's timings.
#[derive(Debug, Clone, Default)]
pub struct DeliveryOptions {
    pub webhooks: SenderOptions,
    pub mqtt: PublisherOptions,
}

/// The wait before the next try after `failures` failures in a row (at least one): `first`,
/// doubled after each further failure, at most `max`.
pub fn backoff(first: Duration, max: Duration, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(31);
    first.saturating_mul(1 << doublings).min(max)
}
