//! wsPrism: a multi-tenant realtime WebSocket gateway.

pub mod config;
pub mod error;
pub mod obs;
pub mod plugin_host;
pub mod policy;
pub mod protocol;
pub mod realtime;
pub mod services;
