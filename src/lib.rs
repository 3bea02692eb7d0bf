//! wsPrism: a multi-tenant realtime WebSocket gateway.

pub mod auth;
pub mod backend;
pub mod config;
pub mod error;
pub mod obs;
pub mod policy;
pub mod protocol;
pub mod realtime;
pub mod services;
