//! Observability: Prometheus metrics and tracing setup. Metric names live in
//! [`metrics`] only; labels come from bounded sets (tenant ids from config, lanes,
//! reasons), never from user, room or IP values.

pub mod logging;
pub mod metrics;
